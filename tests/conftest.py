"""Shared fixtures: small Fashion-MNIST files written in the real idx format (gzipped, as
Debian's dataset-fashion-mnist ships them), and composed run configs for them."""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from embreg.data.datasets import FMNIST_FILES

REPO = Path(__file__).resolve().parents[1]


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


def repro_copy(dst: Path, mirror: Path, **params) -> Path:
    """A temporary git + DVC copy of the repository running the smoke profile on ``mirror``,
    after `dvc repro`. Extra keyword arguments override params.yaml entries."""
    copy_repo(dst)
    p = yaml.safe_load((dst / "params.yaml").read_text())
    p.update(profile="smoke", data={"dir": "data", "mirror": str(mirror)}, **params)
    (dst / "params.yaml").write_text(yaml.safe_dump(p))
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    run_cmd(["git", "init", "-q"], dst)
    run_cmd([*git, "add", "-A"], dst)
    run_cmd([*git, "commit", "-qm", "copy"], dst)
    run_cmd(["dvc", "repro"], dst)
    return dst


@pytest.fixture(scope="session")
def smoke_repo(tmp_path_factory, fmnist_mirror) -> Path:
    """The smoke pipeline run with the local launcher."""
    return repro_copy(tmp_path_factory.mktemp("repo"), fmnist_mirror)
