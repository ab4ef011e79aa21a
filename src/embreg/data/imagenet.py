"""ImageNet and ImageNet-100 (CMC's 100 classes), streamed from the user's folder: nothing is
copied. The prepared directory holds index files into it (train/<wnid>/*.JPEG,
val/<wnid>/*.JPEG; the test split is val), and for ImageNet SimCLR's label-subset lists."""

from __future__ import annotations

import os
import shutil
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from embreg.data.datasets import DATASETS, DatasetSpec, DataUnavailableError, Split, sha256
from embreg.data.imagefolder import LazyImages, default_threads, image_size
from embreg.data.subsets import subset_name

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
