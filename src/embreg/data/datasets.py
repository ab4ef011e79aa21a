"""Datasets through torchvision's loaders, held in memory as uint8 tensors; ImageNet and
ImageNet-100 stream from the user's ImageNet folder (``LazyImages``).

``prepare`` makes a dataset available under ``<data_dir>/<name>/`` (torchvision's own on-disk
layout; for ImageNet, index files pointing into the user's folder), writes the label-subset
index files and a dataset card; ``load_split`` reads it back.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision

from embreg.data.imagefolder import LazyImages, default_threads, image_size
from embreg.data.subsets import subset_name
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


class _STL10(torchvision.datasets.STL10):
    """torchvision's STL10 without its md5 check (see ``_UncheckedCIFAR``)."""

    def _check_integrity(self) -> bool:
        return True


@dataclass(frozen=True)
class Archive:
    """A dataset torchvision ships as one archive that extracts to ``cls.base_folder``."""

    title: str
    cls: type  # a torchvision dataset class (url, filename, tgz_md5, base_folder, md5 lists)
    files: tuple[str, ...]  # the raw files kept, relative to base_folder

    @property
    def folder(self) -> str:
        return self.cls.base_folder

    def known_md5(self) -> dict[str, str]:
        meta = getattr(self.cls, "meta", None)
        listed = self.cls.train_list + self.cls.test_list + ([[meta["filename"], meta["md5"]]] if meta else [])
        return {name: digest for name, digest in listed}


def _fetch_archive(ds: Archive, name: str, root: Path, mirror: str | None) -> None:
    """Raw files from the mirror (extracted folder or official archive), else torchvision's
    checksummed download; only ``ds.files`` are kept under ``root/<base_folder>``."""
    if not (mirror and _from_archive_mirror(ds, Path(mirror), root)):
        try:
            torchvision.datasets.utils.download_and_extract_archive(
                ds.cls.url, str(root), filename=ds.cls.filename, md5=ds.cls.tgz_md5)
        except Exception as exc:  # noqa: BLE001 - any network failure means the same to the user
            raise DataUnavailableError(
                f"{ds.title} not found in mirror {mirror!r} and download failed ({type(exc).__name__}); "
                f"either set data.mirrors.{name} in params.yaml to a directory holding {ds.folder}/ "
                f"or the official {ds.cls.filename}, or run with network access so torchvision can "
                "download it"
            ) from None
        (root / ds.cls.filename).unlink()
    _keep_only(root / ds.folder, ds.files)
    missing = [f for f in ds.files if not (root / ds.folder / f).is_file()]
    if missing:
        raise DataUnavailableError(f"{ds.title}: {ds.folder}/ lacks {', '.join(missing)}")


def _from_archive_mirror(ds: Archive, mirror: Path, root: Path) -> bool:
    """Copy ``ds.files`` from ``mirror/<folder>`` (or ``mirror`` itself when it is that folder),
    else extract them from ``mirror/<archive>``; False when neither is there."""
    for folder in (mirror / ds.folder, mirror):
        if folder.name == ds.folder and folder.is_dir():
            (root / ds.folder).mkdir(parents=True)
            for f in ds.files:
                if (folder / f).is_file():
                    shutil.copyfile(folder / f, root / ds.folder / f)
            return True
    archive = mirror / ds.cls.filename
    if not archive.is_file():
        return False
    wanted = {f"{ds.folder}/{f}" for f in ds.files}
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.name.removeprefix("./") in wanted]
        tar.extractall(root, members=members, filter="data")
    return True


def _keep_only(folder: Path, files: tuple[str, ...]) -> None:
    """Drop what the dataset card does not describe (e.g. the archive's Matlab copies)."""
    for path in folder.iterdir():
        if path.name not in files:
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def _verify(ds: Archive, root: Path) -> bool:
    known = ds.known_md5()
    return all(md5(root / ds.folder / f) == known[f] for f in ds.files if f in known)


def _read_cifar(cls: type) -> Callable[[Path, bool], Split]:
    def read(root: Path, train: bool) -> Split:
        ds = cls(str(root), train=train, download=False)
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # HWC -> CHW
        return Split(images=images, labels=torch.tensor(ds.targets, dtype=torch.long))

    return read


def _read_stl10(root: Path, train: bool) -> Split:
    ds = _STL10(str(root), split="train" if train else "test", download=False)
    return Split(images=torch.from_numpy(ds.data).contiguous(), labels=torch.from_numpy(ds.labels).long())


def _read_stl10_unlabeled(root: Path) -> torch.Tensor:
    return torch.from_numpy(_STL10(str(root), split="unlabeled", download=False).data).contiguous()


def _register_archive(name: str, ds: Archive, read: Callable[[Path, bool], Split],
                      unlabeled: Callable[[Path], torch.Tensor] | None = None) -> None:
    DATASETS.register(name)(
        DatasetSpec(
            fetch=lambda root, mirror: _fetch_archive(ds, name, root, mirror),
            read=read,
            raw_files=tuple(f"{ds.folder}/{f}" for f in ds.files),
            verify=lambda root: _verify(ds, root),
            unlabeled=unlabeled,
        )
    )


CIFAR_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_register_archive("cifar10", Archive("CIFAR-10", _CIFAR10, (*CIFAR_BATCHES, "test_batch", "batches.meta")),
                  _read_cifar(_CIFAR10))
_register_archive("cifar100", Archive("CIFAR-100", _CIFAR100, ("train", "test", "meta")), _read_cifar(_CIFAR100))
_register_archive("stl10", Archive("STL-10", _STL10, ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin",
                                                      "unlabeled_X.bin", "class_names.txt")),
                  _read_stl10, _read_stl10_unlabeled)


# ImageNet: nothing is copied. The prepared directory holds index files into the user's folder
# (train/<wnid>/*.JPEG, val/<wnid>/*.JPEG; the test split is val), and for ImageNet SimCLR's
# label-subset lists.
IMAGENET_INDEX = ("source.txt", "classes.txt", "train.tsv", "val.tsv")
IMAGENET_LAYOUT = "a folder with train/<wnid>/*.JPEG and val/<wnid>/*.JPEG"
IMAGENET_ARCHIVES = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar", "ILSVRC2012_devkit_t12.tar.gz")
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
SIMCLR_DIR = "simclr"  # in the prepared directory
SIMCLR_MIRROR_DIRS = ("simclr_subsets", "imagenet_subsets")  # where the lists may sit in the user's folder
SIMCLR_URL = "https://raw.githubusercontent.com/google-research/simclr/master/imagenet_subsets/{}"
# subset -> (file, names, sha256); the sha256s are those tensorflow_datasets records for these
# URLs (tensorflow_datasets/url_checksums/imagenet2012_subset.txt: 260323 and 2603168 bytes)
SIMCLR_LISTS = {
    "train_1pct": ("1percent.txt", 12811, "71e82a48ba78252683ae334c4d019ebd5c6e855b9599c1389fbe83eb9549cf17"),
    "train_10pct": ("10percent.txt", 128116, "6d09de11e7bdaf5b1f3b1f249b6183695f97310cdd20f0c03e7235b6b9392091"),
}
FULL_IMAGENET = 1_000_000  # a train split larger than this is the real ImageNet: SimCLR's lists are enforced
HEADER_CHUNK = 1024  # image headers read per thread-pool task


def imagenet100_classes() -> list[str]:
    """The 100 wnids of CMC's ImageNet-100 (``imagenet100_classes.txt``), in the file's order."""
    text = resources.files("embreg.data").joinpath("imagenet100_classes.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def _imagenet_folder(name: str, mirror: str | None) -> Path:
    """The user's ImageNet folder, checked for train/ and val/; else a one-line error saying
    what to do."""
    if not mirror:
        raise DataUnavailableError(
            f"ImageNet cannot be downloaded: set data.mirrors.{name} in params.yaml to {IMAGENET_LAYOUT}")
    src = Path(mirror).expanduser().resolve()
    if not src.is_dir():
        raise DataUnavailableError(
            f"ImageNet folder {src} does not exist (ImageNet cannot be downloaded): set data.mirrors.{name} "
            f"in params.yaml to {IMAGENET_LAYOUT}")
    missing = [f"{d}/" for d in ("train", "val") if not (src / d).is_dir()]
    if missing and any((src / a).is_file() for a in IMAGENET_ARCHIVES):
        raise DataUnavailableError(
            f"{src} holds official ILSVRC2012 archives but no {' or '.join(missing)}: with all of "
            f"{', '.join(IMAGENET_ARCHIVES)} there, torchvision.datasets.ImageNet(root, split='train') and "
            "(root, split='val') extract them once (needs scipy) into train/<wnid>/ and val/<wnid>/")
    if missing:
        raise DataUnavailableError(
            f"ImageNet folder {src} has no {' or '.join(missing)}; data.mirrors.{name} must be {IMAGENET_LAYOUT}")
    return src


def _class_dirs(folder: Path) -> set[str]:
    return {e.name for e in os.scandir(folder) if e.is_dir()}


def _first(names: Sequence[str], k: int = 10) -> str:
    return ", ".join(names[:k]) + (", ..." if len(names) > k else "")


def _imagenet_classes(src: Path, keep: list[str] | None) -> list[str]:
    """The sorted wnids: every train/ class folder, or ``keep`` (which must all be there); val/
    must hold the same ones (extra val/ folders are an error unless ``keep`` drops them)."""
    found = _class_dirs(src / "train")
    if keep is not None:
        missing = sorted(set(keep) - found)
        if missing:
            raise DataUnavailableError(
                f"ImageNet-100: {src / 'train'} lacks {len(missing)} of its {len(keep)} classes: {_first(missing)}")
        found = set(keep)
    if not found:
        raise DataUnavailableError(f"{src / 'train'} holds no class folders; it must be {IMAGENET_LAYOUT}")
    val = _class_dirs(src / "val")
    lacking, extra = sorted(found - val), sorted(val - found) if keep is None else []
    if lacking or extra:
        odd = ([f"lacks {len(lacking)}: {_first(lacking)}"] if lacking else []) + (
            [f"has {len(extra)} that train/ lacks: {_first(extra)}"] if extra else [])
        raise DataUnavailableError(
            f"{src / 'val'} does not hold the class folders train/ does ({'; '.join(odd)}); it must be sorted "
            "into val/<wnid>/ as torchvision.datasets.ImageNet(root, split='val') leaves it")
    return sorted(found)


def _list_images(src: Path, split: str, classes: list[str]) -> tuple[list[str], list[int]]:
    """Relative paths (sorted within each class) and labels of ``split``'s images."""
    files: list[str] = []
    labels: list[int] = []
    for label, wnid in enumerate(classes):
        names = sorted(e.name for e in os.scandir(src / split / wnid)
                       if e.is_file() and e.name.lower().endswith(IMAGE_SUFFIXES))
        if not names:
            raise DataUnavailableError(f"ImageNet folder {src}: {split}/{wnid}/ holds no images")
        files += [f"{split}/{wnid}/{n}" for n in names]
        labels += [label] * len(names)
    return files, labels


def _image_sizes(src: Path, files: list[str]) -> list[tuple[int, int]]:
    """(width, height) of each file, from the headers, read in a thread pool."""

    def chunk(part: list[str]) -> list[tuple[int, int]]:
        out = []
        for f in part:
            try:
                out.append(image_size(src / f))
            except OSError as exc:  # PIL's UnidentifiedImageError included
                raise DataUnavailableError(f"cannot read image {src / f} ({type(exc).__name__})") from None
        return out

    parts = [files[i : i + HEADER_CHUNK] for i in range(0, len(files), HEADER_CHUNK)]
    with ThreadPoolExecutor(default_threads()) as pool:
        return [wh for sizes in pool.map(chunk, parts) for wh in sizes]


def _fetch_imagenet(name: str, keep: list[str] | None, root: Path, mirror: str | None) -> None:
    """Write the index files for the user's ImageNet folder (``keep``: only these classes), and
    for the full ImageNet copy SimCLR's subset lists."""
    src = _imagenet_folder(name, mirror)
    classes = _imagenet_classes(src, keep)
    (root / "source.txt").write_text(f"{src}\n")
    (root / "classes.txt").write_text("".join(f"{c}\n" for c in classes))
    for split in ("train", "val"):
        files, labels = _list_images(src, split, classes)
        rows = zip(files, labels, _image_sizes(src, files), strict=True)
        (root / f"{split}.tsv").write_text("".join(f"{f}\t{y}\t{w}\t{h}\n" for f, y, (w, h) in rows), encoding="utf-8")
    if keep is None:
        _fetch_simclr_lists(src, root / SIMCLR_DIR)


def _fetch_simclr_lists(src: Path, out: Path) -> None:
    """SimCLR's 1% and 10% lists from ``src/simclr_subsets/`` (or ``imagenet_subsets/``), else
    downloaded from google-research/simclr."""
    out.mkdir()
    for file, _, _ in SIMCLR_LISTS.values():
        local = [d / file for d in (src / s for s in SIMCLR_MIRROR_DIRS) if (d / file).is_file()]
        if local:
            shutil.copyfile(local[0], out / file)
            continue
        url = SIMCLR_URL.format(file)
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                (out / file).write_bytes(response.read())
        except Exception as exc:  # noqa: BLE001 - any network failure means the same to the user
            raise DataUnavailableError(
                f"SimCLR's {file} is not in {src / SIMCLR_MIRROR_DIRS[0]}/ and its download from {url} failed "
                f"({type(exc).__name__}); put google-research/simclr's imagenet_subsets/1percent.txt and "
                f"10percent.txt in {src / SIMCLR_MIRROR_DIRS[0]}/") from None


def _simclr_subset(root: Path, train: Split, fraction: float) -> tuple[np.ndarray, dict[str, Any]]:
    """The train indices of the files SimCLR's list for ``fraction`` names (1% or 10%)."""
    name = subset_name(fraction)
    if name not in SIMCLR_LISTS:
        raise ValueError(f"imagenet's label subsets are SimCLR's 1% and 10% lists; there is none for "
                         f"subset fraction {fraction}")
    file, count, published = SIMCLR_LISTS[name]
    path = root / SIMCLR_DIR / file
    digest, names = sha256(path), path.read_text().split()
    if len(train) > FULL_IMAGENET and digest != published:
        raise DataUnavailableError(
            f"{file} is not SimCLR's published list ({len(names)} names, {count} expected; its sha256 "
            f"differs); use google-research/simclr's imagenet_subsets/{file}")
    assert isinstance(train.images, LazyImages)
    position = {os.fsdecode(os.path.basename(f)): i for i, f in enumerate(train.images.files)}
    missing = [n for n in names if n not in position]
    if missing:
        raise DataUnavailableError(
            f"SimCLR's {file} names {len(missing)} files that are not in train/: {_first(missing, 3)}")
    idx = np.unique([position[n] for n in names])
    if len(idx) != len(names):
        raise DataUnavailableError(f"SimCLR's {file} names {len(names) - len(idx)} files more than once")
    return idx, {"list": f"{SIMCLR_DIR}/{file}", "list_sha256": digest, "published": digest == published}


def _imagenet_source(root: Path) -> str:
    return (root / "source.txt").read_text().strip()


def _read_imagenet(root: Path, train: bool) -> Split:
    src = Path(_imagenet_source(root))
    if not src.is_dir():
        raise DataUnavailableError(
            f"the ImageNet folder {src} that {root} indexes is gone; restore it or prepare again")
    lines = (root / ("train.tsv" if train else "val.tsv")).read_bytes().splitlines()
    files, *columns = zip(*(line.split(b"\t") for line in lines), strict=True)
    labels, widths, heights = np.array(columns, dtype=np.bytes_).astype(np.int64)
    sizes = torch.from_numpy(np.stack([widths, heights], 1))
    return Split(images=LazyImages(src, np.array(files, dtype=np.bytes_), sizes), labels=torch.from_numpy(labels))


DATASETS.register("imagenet")(
    DatasetSpec(
        fetch=lambda root, mirror: _fetch_imagenet("imagenet", None, root, mirror),
        read=_read_imagenet,
        raw_files=(*IMAGENET_INDEX, *(f"{SIMCLR_DIR}/{f}" for f, _, _ in SIMCLR_LISTS.values())),
        subsets=_simclr_subset,
        source=_imagenet_source,
    )
)
DATASETS.register("imagenet100")(
    DatasetSpec(
        fetch=lambda root, mirror: _fetch_imagenet("imagenet100", imagenet100_classes(), root, mirror),
        read=_read_imagenet,
        raw_files=IMAGENET_INDEX,
        source=_imagenet_source,
    )
)


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
