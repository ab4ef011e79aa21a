"""CIFAR-10 and CIFAR-100 (Krizhevsky 2009): torchvision's pickled batches, held in memory."""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision

from embreg.data.archive import Archive, register_archive
from embreg.data.datasets import Split


class _UncheckedCIFAR:
    """Mixin for torchvision's CIFAR classes that skips their md5 checks.

    torchvision refuses files whose md5 differs from the official release; reading them anyway
    lets generated files in the real format (the tests) and re-packed mirrors through, while the
    dataset card still says honestly whether the files are the official ones (``verified``).
    """

    base_folder: str
    root: str
    meta: dict[str, str]

    def _check_integrity(self) -> bool:
        return True

    def _load_meta(self) -> None:
        with open(os.path.join(self.root, self.base_folder, self.meta["filename"]), "rb") as f:
            self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}


class _CIFAR10(_UncheckedCIFAR, torchvision.datasets.CIFAR10):
    pass


class _CIFAR100(_UncheckedCIFAR, torchvision.datasets.CIFAR100):
    pass


def _read_cifar(cls: type) -> Callable[[Path, bool], Split]:
    def read(root: Path, train: bool) -> Split:
        ds = cls(str(root), train=train, download=False)
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # HWC -> CHW
        return Split(images=images, labels=torch.tensor(ds.targets, dtype=torch.long))

    return read


CIFAR_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
register_archive("cifar10", Archive("CIFAR-10", _CIFAR10, (*CIFAR_BATCHES, "test_batch", "batches.meta")),
                  _read_cifar(_CIFAR10))
register_archive("cifar100", Archive("CIFAR-100", _CIFAR100, ("train", "test", "meta")), _read_cifar(_CIFAR100))
