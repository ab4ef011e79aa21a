"""Datasets torchvision ships as one official archive (CIFAR-10/100, STL-10): fetched from a
local mirror (the extracted folder or the archive) or torchvision's checksummed download, only
the files the dataset card describes kept; registered through ``register_archive``."""

from __future__ import annotations

import shutil
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision

from embreg.data.datasets import DATASETS, DatasetSpec, DataUnavailableError, Split, md5


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


def fetch_archive(ds: Archive, name: str, root: Path, mirror: str | None) -> None:
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
        # only regular files with the names the card lists: nothing can land outside ``root``,
        # which is what the "data" filter (Python >= 3.11.4 / 3.10.12) also enforces where it exists
        members = [m for m in tar.getmembers() if m.name.removeprefix("./") in wanted and m.isfile()]
        tar.extractall(root, members=members, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    return True


def _keep_only(folder: Path, files: tuple[str, ...]) -> None:
    """Drop what the dataset card does not describe (e.g. the archive's Matlab copies)."""
    for path in folder.iterdir():
        if path.name not in files:
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def _verify(ds: Archive, root: Path) -> bool:
    known = ds.known_md5()
    return all(md5(root / ds.folder / f) == known[f] for f in ds.files if f in known)


def register_archive(name: str, ds: Archive, read: Callable[[Path, bool], Split],
                      unlabeled: Callable[[Path], torch.Tensor] | None = None) -> None:
    DATASETS.register(name)(
        DatasetSpec(
            fetch=lambda root, mirror: fetch_archive(ds, name, root, mirror),
            read=read,
            raw_files=tuple(f"{ds.folder}/{f}" for f in ds.files),
            verify=lambda root: _verify(ds, root),
            unlabeled=unlabeled,
        )
    )
