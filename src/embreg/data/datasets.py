"""The dataset API: a registry of datasets by name (each source family registers its own in
its module: fashion_mnist, cifar, stl10, imagenet), the in-memory ``Split``, and loading a
prepared dataset back. Images are held in memory as uint8 tensors, or streamed from the user's
folder (``LazyImages``, ImageNet).

``prepare`` makes a dataset available under ``<data_dir>/<name>/`` (torchvision's own on-disk
layout; for ImageNet, index files pointing into the user's folder), writes the label-subset
index files and a dataset card; ``load_split`` reads it back.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from embreg.data.imagefolder import LazyImages
from embreg.registry import Registry

DATASETS: Registry = Registry("dataset")


class DataUnavailableError(RuntimeError):
    """The raw files are neither in the local mirror nor downloadable."""


@dataclass
class Split:
    images: torch.Tensor | LazyImages  # (n, c, h, w) uint8, or files decoded on demand
    labels: torch.Tensor  # (n,) int64

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, idx: torch.Tensor | np.ndarray | Sequence[int] | slice) -> Split:
        """The samples at ``idx``; lazy images stay lazy (nothing is decoded)."""
        images = self.images.take(idx) if isinstance(self.images, LazyImages) else self.images[idx]
        return Split(images=images, labels=self.labels[idx])


@dataclass
class DatasetSpec:
    """How to fetch and read one dataset."""

    fetch: Callable[[Path, str | None], None]  # (root, mirror) -> raw files under root
    read: Callable[[Path, bool], Split]  # (root, train) -> Split
    raw_files: tuple[str, ...]  # files whose checksums the card records, relative to root
    # (root) -> whether the raw files match torchvision's published md5s; None: not recorded
    verify: Callable[[Path], bool] | None = None
    # (root, train split, fraction) -> (sorted train indices, what the card records about them);
    # None: prepare draws class-balanced seeded subsets (``balanced_subset``)
    subsets: Callable[[Path, Split, float], tuple[np.ndarray, dict[str, Any]]] | None = None
    # (root) -> the folder the images are read from, for datasets referenced there, not copied
    source: Callable[[Path], str] | None = None
    # (root) -> unlabeled uint8 images (n, c, h, w) for pretraining (STL-10's 100k); None: none
    unlabeled: Callable[[Path], torch.Tensor] | None = None


def dataset_root(data_dir: str | Path, name: str) -> Path:
    return Path(data_dir) / name


def load_split(data_dir: str | Path, name: str, train: bool, image_size: int | None = None) -> Split:
    """A prepared split. ``image_size`` sets the evaluation view of streamed (lazy) images;
    in-memory datasets have their own fixed size."""
    root = dataset_root(data_dir, name)
    if not root.is_dir():
        raise DataUnavailableError(
            f"dataset {name!r} is not prepared under {root}; run `dvc repro prepare` first"
        )
    split = DATASETS.get(name).read(root, train)
    if image_size and isinstance(split.images, LazyImages):
        split.images = split.images.with_crop(image_size)
    return split


def load_unlabeled(data_dir: str | Path, name: str) -> torch.Tensor:
    """A prepared dataset's unlabeled images (uint8, n x c x h x w), for pretraining."""
    spec = DATASETS.get(name)
    if spec.unlabeled is None:
        raise ValueError(f"dataset {name!r} has no unlabeled split; "
                         f"those that do: {', '.join(n for n in DATASETS.names() if DATASETS.get(n).unlabeled)}")
    return spec.unlabeled(dataset_root(data_dir, name))


def md5(path: Path) -> str:
    return _digest(path, hashlib.md5())


def sha256(path: Path) -> str:
    return _digest(path, hashlib.sha256())


def _digest(path: Path, h: Any) -> str:
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_atomically(
    data_dir: str | Path, name: str, mirror: str | None, finish: Callable[[Path], None]
) -> Path:
    """Fetch into a temporary sibling directory, let ``finish(tmp_root)`` add its files, then
    rename it into place: a failure leaves no partial dataset behind."""
    spec = DATASETS.get(name)
    final = dataset_root(data_dir, name)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=final.parent))
    try:
        spec.fetch(tmp, mirror)
        finish(tmp)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return final
