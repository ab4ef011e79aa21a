"""STL-10 (Coates et al. 2011): torchvision's binary files, the 100k unlabeled images included
(for pretraining with ``dataset.pretrain_unlabeled``)."""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision

from embreg.data.archive import Archive, register_archive
from embreg.data.datasets import Split


class _STL10(torchvision.datasets.STL10):
    """torchvision's STL10 without its md5 check (see ``embreg.data.cifar._UncheckedCIFAR``)."""

    def _check_integrity(self) -> bool:
        return True


def _read_stl10(root: Path, train: bool) -> Split:
    ds = _STL10(str(root), split="train" if train else "test", download=False)
    return Split(images=torch.from_numpy(ds.data).contiguous(), labels=torch.from_numpy(ds.labels).long())


def _read_stl10_unlabeled(root: Path) -> torch.Tensor:
    return torch.from_numpy(_STL10(str(root), split="unlabeled", download=False).data).contiguous()


register_archive("stl10", Archive("STL-10", _STL10, ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin",
                                                      "unlabeled_X.bin", "class_names.txt")),
                  _read_stl10, _read_stl10_unlabeled)
