"""Shared fixtures: small Fashion-MNIST files written in the real idx format (gzipped, as
Debian's dataset-fashion-mnist ships them), and composed run configs for them.

Opt-in: EMBREG_TEST_THREADS=N sets torch.set_num_threads(N) in the pytest process at session
start (unset: torch's default). Floating-point results whose summation order depends on the
thread count (BLAS, LAPACK, reductions) must pass under any N; run the fast suite under 1 and 2
(and under OMP_NUM_THREADS=1, which also reaches subprocesses) to check.
A run whose config sets runtime.threads > 0 still sets its own count."""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from embreg.data.fashion_mnist import FMNIST_FILES

REPO = Path(__file__).resolve().parents[1]


def pytest_sessionstart(session) -> None:
    if os.environ.get("EMBREG_TEST_THREADS"):  # see the module docstring
        import torch

        torch.set_num_threads(int(os.environ["EMBREG_TEST_THREADS"]))


def _idx_images(images: np.ndarray) -> bytes:
    n, h, w = images.shape
    return struct.pack(">IIII", 0x00000803, n, h, w) + images.astype(np.uint8).tobytes()


def _idx_labels(labels: np.ndarray) -> bytes:
    return struct.pack(">II", 0x00000801, len(labels)) + labels.astype(np.uint8).tobytes()


def synthetic_split(per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class c is a bright bar at row 2c+3 plus noise: learnable, but not trivially."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(10), per_class)
    rng.shuffle(labels)
    images = rng.integers(0, 60, size=(len(labels), 28, 28))
    for i, c in enumerate(labels):
        images[i, 2 * c + 3 : 2 * c + 6, 4:24] += 150
    return np.clip(images, 0, 255).astype(np.uint8), labels


def write_fmnist(dir_: Path, train_per_class: int = 50, test_per_class: int = 20, gz: bool = True) -> Path:
    dir_.mkdir(parents=True, exist_ok=True)
    (tr_x, tr_y), (te_x, te_y) = synthetic_split(train_per_class, 0), synthetic_split(test_per_class, 1)
    blobs = dict(zip(FMNIST_FILES, (_idx_images(tr_x), _idx_labels(tr_y), _idx_images(te_x), _idx_labels(te_y)), strict=True))
    for name, blob in blobs.items():
        if gz:
            with gzip.open(dir_ / f"{name}.gz", "wb") as f:
                f.write(blob)
        else:
            (dir_ / name).write_bytes(blob)
    return dir_


def colour_split(n_classes: int, per_class: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, 3, size, size) uint8 images and int64 labels: class c is a bright horizontal bar
    whose row and colour depend on c, over noise; asymmetric, so a transposed read shows."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), per_class)
    rng.shuffle(labels)
    images = rng.integers(0, 60, size=(len(labels), 3, size, size))
    for i, c in enumerate(labels):
        row = 2 + (c * 3) % (size - 4)
        images[i, c % 3, row : row + 2, 2 : size // 2] += 180
    return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.int64)


def _pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)  # the official files are Python 2 pickles


def _cifar_batch(images: np.ndarray, labels: np.ndarray, label_keys: dict[str, list[int]], name: str) -> dict:
    return {"batch_label": name, **label_keys, "data": images.reshape(len(images), -1),
            "filenames": [f"img_{i}.png" for i in range(len(images))]}


def write_cifar10(dir_: Path, train_per_class: int = 5, test_per_class: int = 2) -> Path:
    """``dir_/cifar-10-batches-py/``: data_batch_1..5, test_batch, batches.meta (real keys)."""
    out = dir_ / "cifar-10-batches-py"
    out.mkdir(parents=True, exist_ok=True)
    (tr_x, tr_y), (te_x, te_y) = colour_split(10, train_per_class, 32, 0), colour_split(10, test_per_class, 32, 1)
    for i, part in enumerate(np.array_split(np.arange(len(tr_y)), 5), start=1):
        _pickle(out / f"data_batch_{i}", _cifar_batch(tr_x[part], tr_y[part], {"labels": tr_y[part].tolist()},
                                                      f"training batch {i} of 5"))
    _pickle(out / "test_batch", _cifar_batch(te_x, te_y, {"labels": te_y.tolist()}, "testing batch 1 of 1"))
    _pickle(out / "batches.meta", {"num_cases_per_batch": 10000, "num_vis": 3072,
                                   "label_names": [f"class{c}" for c in range(10)]})
    return dir_


def write_cifar100(dir_: Path, train_per_class: int = 2, test_per_class: int = 1) -> Path:
    """``dir_/cifar-100-python/``: train, test, meta with fine and coarse labels (real keys)."""
    out = dir_ / "cifar-100-python"
    out.mkdir(parents=True, exist_ok=True)
    for name, (x, y) in (("train", colour_split(100, train_per_class, 32, 0)),
                         ("test", colour_split(100, test_per_class, 32, 1))):
        keys = {"fine_labels": y.tolist(), "coarse_labels": (y // 5).tolist()}
        _pickle(out / name, _cifar_batch(x, y, keys, name))
    _pickle(out / "meta", {"fine_label_names": [f"fine{c}" for c in range(100)],
                           "coarse_label_names": [f"coarse{c}" for c in range(20)]})
    return dir_


def write_stl10(dir_: Path, train_per_class: int = 3, test_per_class: int = 2) -> Path:
    """``dir_/stl10_binary/``: *_X.bin (uint8, each channel stored column-major as STL-10 does),
    *_y.bin (labels 1..10), unlabeled_X.bin (20 images) and class_names.txt."""
    out = dir_ / "stl10_binary"
    out.mkdir(parents=True, exist_ok=True)
    for split, (x, y) in (("train", colour_split(10, train_per_class, 96, 0)),
                          ("test", colour_split(10, test_per_class, 96, 1))):
        (out / f"{split}_X.bin").write_bytes(np.ascontiguousarray(x.transpose(0, 1, 3, 2)).tobytes())
        (out / f"{split}_y.bin").write_bytes((y + 1).astype(np.uint8).tobytes())
    unlabeled, _ = colour_split(10, 2, 96, 2)  # 20 images, stored like the labelled ones
    (out / "unlabeled_X.bin").write_bytes(np.ascontiguousarray(unlabeled.transpose(0, 1, 3, 2)).tobytes())
    (out / "class_names.txt").write_text("".join(f"class{c}\n" for c in range(10)))
    return dir_


def as_archive(dir_: Path, folder: str, archive: Path) -> Path:
    """Pack ``dir_/folder`` as the official .tar.gz does (one top-level folder)."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(dir_ / folder, arcname=folder)
    return archive


@pytest.fixture(autouse=True)
def _no_plugin_terms_leak():
    """A test that names a term module in $EMBREG_TERMS (monkeypatched) gets its terms registered
    in this process; they leave with the test, so that the next test sees the package's terms only
    (its docs table, its order). The package's own modules stay imported and registered."""
    yield
    from embreg import terms

    own = f"{terms.__name__}."
    for name, t in list(terms.TERMS._items.items()):
        if not t.fn.__module__.startswith(own):
            del terms.TERMS._items[name]
    for mod in [m for m in terms._imported if not m.startswith(own)]:
        terms._imported.discard(mod)
        sys.modules.pop(mod, None)


@pytest.fixture(scope="session")
def fmnist_mirror(tmp_path_factory) -> Path:
    return write_fmnist(tmp_path_factory.mktemp("mirror"))


@pytest.fixture(scope="session")
def prepared_data(tmp_path_factory, fmnist_mirror) -> Path:
    """A data dir prepared from the synthetic mirror (what the prepare stage writes)."""
    from embreg.data.prepare import prepare
    from embreg.params import compose_run

    data = tmp_path_factory.mktemp("data")
    prepare(data, compose_run("smoke").dataset, str(fmnist_mirror))
    return data


@pytest.fixture
def smoke_cfg(prepared_data, tmp_path):
    """A function composing the smoke profile onto the prepared synthetic data."""
    from embreg.params import compose_run

    def make(*overrides: str):
        return compose_run("smoke", [f"paths.data={prepared_data}", f"paths.results={tmp_path}/results",
                                     f"paths.checkpoints={tmp_path}/ckpt", "runtime.progress=false", *overrides])

    return make


def tool_env() -> dict[str, str]:
    """The environment for the project's commands: this venv's tools first on PATH."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("EMBREG_RETRAIN", None)
    env.pop("EMBREG_COMMAND", None)  # each command records its own
    return env


def run_cmd(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command with this venv's tools first on PATH; on failure show its output."""
    res = subprocess.run(cmd, cwd=cwd, env=tool_env(), capture_output=True, text=True)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res


def copy_repo(dst: Path) -> None:
    """The files a clone would have (tracked and untracked-not-ignored), without results."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for rel in listed:
        if rel.startswith(("data/", "results/")) or rel == "dvc.lock" or not (REPO / rel).is_file():
            continue
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, dst / rel)


def use_pipeline(params: dict, profile: str, overrides: list[str] | tuple[str, ...] = (), **knobs) -> dict:
    """params.yaml's mapping with its ``default`` pipeline running ``profile``: the profile's own
    values (knobs left out: null), ``overrides`` and ``knobs``."""
    params["default"] = {"profile": profile, "overrides": list(overrides), **knobs}
    return params


def repro_copy(dst: Path, mirror: Path, **params) -> Path:
    """A temporary git + DVC copy of the repository running the smoke profile on ``mirror``,
    after `dvc repro`. ``profile`` and ``overrides`` set the default pipeline's (its knobs are
    the profile's own); other keyword arguments override params.yaml entries."""
    copy_repo(dst)
    p = yaml.safe_load((dst / "params.yaml").read_text())
    dataset = params.get("dataset", "fashion_mnist")  # the mirror holds the profile's dataset
    use_pipeline(p, params.pop("profile", "smoke"), params.pop("overrides", ()))
    p.update({"data": {"dir": "data", "mirrors": {**p["data"]["mirrors"], dataset: str(mirror)}}, **params})
    (dst / "params.yaml").write_text(yaml.safe_dump(p))
    git_commit(dst, "copy", init=True)
    run_cmd(["dvc", "repro", "analyze"], dst)
    return dst


def git_commit(repo: Path, message: str, init: bool = False) -> None:
    """Commit everything in ``repo`` (``init``: a new repository first)."""
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    if init:
        run_cmd(["git", "init", "-q"], repo)
    run_cmd([*git, "add", "-A"], repo)
    run_cmd([*git, "commit", "-qm", message], repo)


@pytest.fixture(scope="session")
def smoke_repo(tmp_path_factory, fmnist_mirror) -> Path:
    """The smoke pipeline run with the local launcher."""
    return repro_copy(tmp_path_factory.mktemp("repo"), fmnist_mirror)
