"""The real torchvision FashionMNIST loader on small files written in the real idx format."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from embreg.data import DataUnavailableError, balanced_subset, load_split, read_index_file
from embreg.data.prepare import card_markdown, prepare
from embreg.params import compose_run
from tests.conftest import synthetic_split, write_fmnist


@pytest.mark.parametrize("gz", [True, False])
def test_prepare_reads_mirror_with_torchvision(tmp_path, gz):
    mirror = write_fmnist(tmp_path / "mirror", train_per_class=12, test_per_class=5, gz=gz)
    card = prepare(tmp_path / "data", compose_run("smoke").dataset, str(mirror))
    train = load_split(tmp_path / "data", "fashion_mnist", train=True)
    test = load_split(tmp_path / "data", "fashion_mnist", train=False)
    x, y = synthetic_split(12, 0)
    assert train.images.shape == (120, 1, 28, 28) and train.images.dtype == torch.uint8
    assert torch.equal(train.images[:, 0], torch.from_numpy(x))
    assert torch.equal(train.labels, torch.from_numpy(y).long())
    assert len(test) == 50
    assert card["splits"]["train"]["per_class"] == {str(c): 12 for c in range(10)}
    assert card["splits"]["test"]["size"] == 50
    # what torchvision itself sees in that directory
    ds = torchvision.datasets.FashionMNIST(str(tmp_path / "data" / "fashion_mnist"), train=True)
    assert len(ds) == 120 and int(ds[0][1]) == int(y[0])


def test_subsets_are_balanced_seeded_and_written(prepared_data):
    root = prepared_data / "fashion_mnist" / "subsets"
    train = load_split(prepared_data, "fashion_mnist", train=True)
    one = read_index_file(root / "train_1pct.txt")
    ten = read_index_file(root / "train_10pct.txt")
    # 50 per class: 1% rounds to 0 -> at least one per class; 10% -> 5 per class
    assert torch.bincount(train.labels[one], minlength=10).tolist() == [1] * 10
    assert torch.bincount(train.labels[ten], minlength=10).tolist() == [5] * 10
    again = balanced_subset(train.labels, 0.1, seed=0)
    assert np.array_equal(again, ten.numpy())
    assert not np.array_equal(balanced_subset(train.labels, 0.1, seed=1), again)


def test_balanced_subset_on_real_sizes():
    labels = torch.arange(10).repeat_interleave(6000)
    idx = balanced_subset(labels, 0.01, seed=0)
    assert len(idx) == 600 and np.bincount(labels[idx].numpy()).tolist() == [60] * 10
    with pytest.raises(ValueError, match="fraction"):
        balanced_subset(labels, 0.0, seed=0)


def test_card_markdown_lists_counts():
    card = {"dataset": "x", "image_shape": [1, 28, 28],
            "splits": {"train": {"size": 20, "per_class": {"0": 10, "1": 10}},
                       "test": {"size": 4, "per_class": {"0": 2, "1": 2}}},
            "subsets": {"train_10pct": {"size": 2, "seed": 0, "md5": "m", "per_class": {"0": 1, "1": 1}}},
            "raw_md5": {"a": "h"}}
    md = card_markdown(card)
    assert "| 0 | 10 | 2 | 1 |" in md and "`train_10pct`: 2 images" in md


def test_missing_data_is_one_clear_error_and_writes_nothing(tmp_path, monkeypatch):
    # no mirror, and downloads pointed at a closed local port: the offline situation
    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "mirrors", ["http://127.0.0.1:9/"])
    with pytest.raises(DataUnavailableError) as err:
        prepare(tmp_path / "data", compose_run("smoke").dataset, str(tmp_path / "no-mirror"))
    msg = str(err.value)
    assert "\n" not in msg and "dataset-fashion-mnist" in msg and "data.mirror" in msg
    assert list((tmp_path / "data").iterdir()) == []


def test_load_unprepared_dataset_says_how(tmp_path):
    with pytest.raises(DataUnavailableError, match="dvc repro prepare"):
        load_split(tmp_path, "fashion_mnist", train=True)
