"""Fashion-MNIST (Xiao et al. 2017): the four idx files, from a local mirror (Debian's
dataset-fashion-mnist, .gz or raw) or torchvision's download."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import torchvision

from embreg.data.datasets import DATASETS, DatasetSpec, DataUnavailableError, Split

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
            "data.mirrors.fashion_mnist in params.yaml to a directory holding the four idx files (.gz or raw), "
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
