"""Datasets through torchvision's loaders, held in memory as uint8 tensors.

``prepare`` makes a dataset available under ``<data_dir>/<name>/`` (torchvision's own on-disk
layout), writes the label-subset index files and a dataset card; ``load_split`` reads it back.
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision

from embreg.registry import Registry

DATASETS: Registry = Registry("dataset")


class DataUnavailableError(RuntimeError):
    """The raw files are neither in the local mirror nor downloadable."""


@dataclass
class Split:
    images: torch.Tensor  # (n, c, h, w) uint8
    labels: torch.Tensor  # (n,) int64

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class DatasetSpec:
    """How to fetch and read one dataset."""

    fetch: Callable[[Path, str | None], None]  # (root, mirror) -> raw files under root
    read: Callable[[Path, bool], Split]  # (root, train) -> Split
    raw_files: tuple[str, ...]  # files whose checksums the card records, relative to root


FMNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _fetch_fashion_mnist(root: Path, mirror: str | None) -> None:
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    if mirror and _copy_from_mirror(Path(mirror), raw):
        return
    try:  # the network path: torchvision's own download (checksummed)
        torchvision.datasets.FashionMNIST(str(root), train=True, download=True)
        torchvision.datasets.FashionMNIST(str(root), train=False, download=True)
    except Exception as exc:  # noqa: BLE001 - any network failure means the same to the user
        raise DataUnavailableError(
            f"Fashion-MNIST not found in mirror {mirror!r} and download failed ({type(exc).__name__}); "
            "either install Debian's package (apt-get install dataset-fashion-mnist) or set "
            "data.mirror in params.yaml to a directory holding the four idx files (.gz or raw), "
            "or run with network access so torchvision can download it"
        ) from None
    for leftover in raw.glob("*.gz"):  # torchvision keeps the archives; the card hashes idx
        leftover.unlink()


def _copy_from_mirror(mirror: Path, raw: Path) -> bool:
    """Copy (decompressing .gz) the four idx files; False if any is missing."""
    sources = {}
    for name in FMNIST_FILES:
        for candidate in (mirror / name, mirror / f"{name}.gz"):
            if candidate.is_file():
                sources[name] = candidate
                break
    if len(sources) != len(FMNIST_FILES):
        return False
    for name, src in sources.items():
        opener = gzip.open if src.suffix == ".gz" else open
        with opener(src, "rb") as fin, open(raw / name, "wb") as fout:
            shutil.copyfileobj(fin, fout)
    return True


def _read_fashion_mnist(root: Path, train: bool) -> Split:
    ds = torchvision.datasets.FashionMNIST(str(root), train=train, download=False)
    return Split(images=ds.data.unsqueeze(1).contiguous(), labels=ds.targets.long())


DATASETS.register("fashion_mnist")(
    DatasetSpec(
        fetch=_fetch_fashion_mnist,
        read=_read_fashion_mnist,
        raw_files=tuple(f"FashionMNIST/raw/{f}" for f in FMNIST_FILES),
    )
)


def dataset_root(data_dir: str | Path, name: str) -> Path:
    return Path(data_dir) / name


def load_split(data_dir: str | Path, name: str, train: bool) -> Split:
    root = dataset_root(data_dir, name)
    if not root.is_dir():
        raise DataUnavailableError(
            f"dataset {name!r} is not prepared under {root}; run `dvc repro prepare` first"
        )
    return DATASETS.get(name).read(root, train)


def md5(path: Path) -> str:
    h = hashlib.md5()
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
