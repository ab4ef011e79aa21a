"""CIFAR-10, CIFAR-100 and STL-10 through torchvision's own loaders, on small files written in
the real on-disk formats (CIFAR's pickled batches, STL-10's column-major binaries), from an
extracted folder or the official .tar.gz; and one `dvc repro` per profile at smoke size."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from embreg.data import DATASETS, DataUnavailableError, load_split, load_unlabeled, read_index_file
from embreg.data.prepare import card_markdown, check_dataset_key, prepare
from embreg.params import compose_run
from tests.conftest import as_archive, colour_split, repro_copy, write_cifar10, write_cifar100, write_stl10

# name -> (writer, folder, archive, classes, image size, (train, test) per class as written)
CASES: dict[str, tuple[Callable[[Path], Path], str, str, int, int, tuple[int, int]]] = {
    "cifar10": (write_cifar10, "cifar-10-batches-py", "cifar-10-python.tar.gz", 10, 32, (5, 2)),
    "cifar100": (write_cifar100, "cifar-100-python", "cifar-100-python.tar.gz", 100, 32, (2, 1)),
    "stl10": (write_stl10, "stl10_binary", "stl10_binary.tar.gz", 10, 96, (3, 2)),
}
TV_CLASSES = {"cifar10": torchvision.datasets.CIFAR10, "cifar100": torchvision.datasets.CIFAR100,
              "stl10": torchvision.datasets.STL10}


def _prepare(name: str, mirror: Path, data: Path) -> dict:
    return prepare(data, compose_run(name).dataset, str(mirror))


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("packed", [False, True], ids=["folder", "archive"])
def test_prepare_reads_real_formats(tmp_path, name, packed):
    writer, folder, archive, n_cls, size, (n_tr, n_te) = CASES[name]
    mirror = writer(tmp_path / "extracted")
    if packed:
        mirror = as_archive(mirror, folder, tmp_path / "mirror" / archive).parent
    card = _prepare(name, mirror, tmp_path / "data")
    train = load_split(tmp_path / "data", name, train=True)
    test = load_split(tmp_path / "data", name, train=False)
    for split, seed, per_class in ((train, 0, n_tr), (test, 1, n_te)):
        x, y = colour_split(n_cls, per_class, size, seed)
        assert split.images.shape == (n_cls * per_class, 3, size, size) and split.images.dtype == torch.uint8
        assert torch.equal(split.images, torch.from_numpy(x))  # pixel for pixel, same orientation
        assert split.labels.dtype == torch.int64 and torch.equal(split.labels, torch.from_numpy(y))
    assert card["image_shape"] == [3, size, size]
    assert card["splits"]["train"]["per_class"] == {str(c): n_tr for c in range(n_cls)}
    assert card["verified"] is False  # generated files are not torchvision's published ones
    assert "do NOT match" in card_markdown(card)
    assert sorted(card["raw_md5"]) == sorted(f"{folder}/{f}" for f in _files(tmp_path / "data" / name / folder))


def _files(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir()]


def test_stl10_orientation_rows_stay_rows(tmp_path):
    """STL-10 stores each channel column-major; a horizontal bar must come back horizontal."""
    _prepare("stl10", write_stl10(tmp_path / "m"), tmp_path / "data")
    train = load_split(tmp_path / "data", "stl10", train=True)
    img, c = train.images[0], int(train.labels[0])
    row = 2 + (c * 3) % 92
    bar = img[c % 3, row : row + 2, 2:48].float().mean()
    assert bar > 150 and img[c % 3, 50:, :].float().mean() < 60


def test_cifar100_uses_fine_labels_and_balanced_subsets(tmp_path):
    _prepare("cifar100", write_cifar100(tmp_path / "m", train_per_class=10), tmp_path / "data")
    root = tmp_path / "data" / "cifar100" / "subsets"
    train = load_split(tmp_path / "data", "cifar100", train=True)
    assert int(train.labels.max()) == 99  # fine labels (coarse ones stop at 19)
    ten = read_index_file(root / "train_10pct.txt")
    assert torch.bincount(train.labels[ten], minlength=100).tolist() == [1] * 100


def test_torchvision_sees_the_prepared_folder(tmp_path):
    """The prepared directory keeps torchvision's layout (its own class, md5 check aside)."""
    _prepare("cifar10", write_cifar10(tmp_path / "m"), tmp_path / "data")
    root = tmp_path / "data" / "cifar10"
    with pytest.raises(RuntimeError, match="corrupted"):  # unpatched torchvision refuses them
        torchvision.datasets.CIFAR10(str(root), train=True)
    assert sorted(_files(root / "cifar-10-batches-py")) == sorted(
        [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"])


@pytest.mark.parametrize("name", sorted(CASES))
def test_missing_mirror_is_one_line_and_writes_nothing(tmp_path, monkeypatch, name):
    _, folder, archive, *_ = CASES[name]
    monkeypatch.setattr(TV_CLASSES[name], "url", "http://127.0.0.1:9/offline.tar.gz")  # offline
    with pytest.raises(DataUnavailableError) as err:
        _prepare(name, tmp_path / "no-mirror", tmp_path / "data")
    msg = str(err.value)
    assert "\n" not in msg and f"data.mirrors.{name}" in msg and folder in msg and archive in msg
    assert "network" in msg
    assert list((tmp_path / "data").iterdir()) == []


def test_incomplete_mirror_names_the_missing_file(tmp_path):
    mirror = write_cifar10(tmp_path / "m")
    (mirror / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(DataUnavailableError, match="lacks test_batch"):
        _prepare("cifar10", mirror, tmp_path / "data")
    assert list((tmp_path / "data").iterdir()) == []


@pytest.mark.parametrize("has_filter", [True, False], ids=["filter", "python-before-3.11.4"])
def test_an_archive_yields_only_the_regular_files_the_card_lists(tmp_path, monkeypatch, has_filter):
    """A link under an expected name is not extracted (the file is then missing), with or without
    tarfile's extraction filters (absent before Python 3.11.4)."""
    import tarfile

    if not has_filter:
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    mirror = write_cifar10(tmp_path / "m")
    archive = as_archive(mirror, "cifar-10-batches-py", tmp_path / "mirror" / "cifar-10-python.tar.gz")
    assert _prepare("cifar10", archive.parent, tmp_path / "good")["splits"]["test"]["size"] > 0
    with tarfile.open(archive, "w:gz") as tar:  # test_batch replaced by a link to a file outside
        for f in (mirror / "cifar-10-batches-py").iterdir():
            if f.name != "test_batch":
                tar.add(f, arcname=f"cifar-10-batches-py/{f.name}")
        link = tarfile.TarInfo("cifar-10-batches-py/test_batch")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    with pytest.raises(DataUnavailableError, match="lacks test_batch"):
        _prepare("cifar10", archive.parent, tmp_path / "data")


def test_unknown_dataset_lists_the_valid_ones():
    with pytest.raises(ValueError, match="valid: cifar10, cifar100, fashion_mnist, imagenet, imagenet100, stl10"):
        DATASETS.get("imagenet21k")


def test_params_dataset_must_match_the_profile():
    with pytest.raises(ValueError, match="set dataset: cifar10$"):
        check_dataset_key("fashion_mnist", "cifar10", compose_run("cifar10").dataset)
    check_dataset_key("stl10", "stl10", compose_run("stl10").dataset)


def test_fashion_mnist_card_keeps_its_fields(tmp_path, fmnist_mirror):
    """No `verified` flag for Fashion-MNIST; the class-disjoint split of the metric-learning arms is recorded."""
    card = prepare(tmp_path / "data", compose_run("smoke").dataset, str(fmnist_mirror))
    assert list(card) == ["dataset", "image_shape", "splits", "subsets", "raw_md5", "class_split"]
    assert card["class_split"]["train"] == [0, 1, 2, 3, 4] and card["class_split"]["retrieval"] == [5, 6, 7, 8, 9]
    md = card_markdown(card)
    assert "Raw files (decompressed idx, md5):" in md
    assert "train on classes 0, 1, 2, 3, 4; recall@k on the test images of classes 5, 6, 7, 8, 9" in md


# smoke-sized overrides for the paper profiles: a few steps on the CPU, tiny evaluation
# one ablation without its sweep points: what is the profile's own (its data, stem, projector,
# optimizer, evaluation) runs in every arm; the other ablations are the default's, tested there
SMOKE = ["pretrain.epochs=1", "pretrain.steps_per_epoch=1", "optim.batch_size=8", "optim.warmup_epochs=0",
         "backbone.projector=[32,32]", "profile.device=cpu", "profile.seeds=[0]", "profile.sweep_seeds=[]",
         "profile.ablations=[layers]",
         "eval.probe_epochs=1", "eval.finetune_epochs=[1,1]", "eval.finetune_batch_size=16",
         "eval.feature_batch_size=256", "eval.spectrum_size=8", "runtime.progress=false"]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_profile_repro_writes_tables(tmp_path, name):
    writer, *_ = CASES[name]
    mirror = writer(tmp_path / "mirror")
    t0 = time.time()
    repo = repro_copy(tmp_path / "repo", mirror, profile=name, dataset=name, overrides=SMOKE)
    res = repo / "results" / name
    card = json.loads((repo / "results" / "data" / f"{name}.json").read_text())
    assert card["dataset"] == name and card["verified"] is False
    summary = json.loads((res / "summary.json").read_text())["arms"]
    assert {"vicreg", "svmax", "vicreg_all", "svmax_all", "supervised", "random_init"} <= set(summary)
    for table in ("main", "layers", "layers_collapse", "cost"):
        assert (res / "tables" / f"{table}.md").stat().st_size > 0, table
    assert np.isfinite(summary["vicreg"]["metrics"]["linear_top1"]["mean"])
    print(f"{name}: dvc repro {time.time() - t0:.0f} s")


def test_stl10_unlabeled_split_is_kept_and_read(tmp_path):
    """unlabeled_X.bin is prepared (the card counts it) and reads back in the labelled splits'
    orientation; the pretraining split of an SSL arm is train + unlabeled with label -1, while
    the supervised baseline keeps to the labelled images."""
    from embreg.run import pretraining_split

    card = _prepare("stl10", write_stl10(tmp_path / "m"), tmp_path / "data")
    assert card["unlabeled"] == {"size": 20} and "unlabeled_X.bin" in " ".join(card["raw_md5"])
    assert "unlabeled 20 (pretraining only)" in card_markdown(card)
    extra = load_unlabeled(tmp_path / "data", "stl10")
    expected, _ = colour_split(10, 2, 96, 2)
    assert extra.dtype == torch.uint8 and torch.equal(extra, torch.from_numpy(expected))
    train = load_split(tmp_path / "data", "stl10", train=True)
    ssl = compose_run("stl10", [f"paths.data={tmp_path / 'data'}", "objective=vicreg"])
    pre = pretraining_split(ssl, train)
    assert len(pre) == len(train) + 20 and (pre.labels[len(train):] == -1).all()
    assert torch.equal(pre.images[: len(train)], train.images)
    sup = compose_run("stl10", [f"paths.data={tmp_path / 'data'}", "objective=supervised"])
    assert pretraining_split(sup, train) is train


def test_pretrain_unlabeled_needs_a_dataset_that_has_one():
    from embreg.run import validate

    cfg = compose_run("cifar10", ["dataset.pretrain_unlabeled=true"])
    with pytest.raises(ValueError, match="cifar10.*no unlabeled split"):
        validate(cfg)
    with pytest.raises(ValueError, match="those that do: stl10"):
        load_unlabeled("data", "cifar10")
