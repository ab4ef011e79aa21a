"""Image files decoded on demand, for datasets too large to hold in memory (ImageNet).

``LazyImages`` stands in for the uint8 (n, 3, h, w) tensor the rest of the code indexes:
indexing decodes the evaluation view (shorter side resized to 256, centre crop 224, as
torchvision's ``Resize(256)`` + ``CenterCrop(224)``), and ``crops`` cuts augmentation crops
from the full images; both decode in a thread pool (PIL releases the GIL while it decodes and
resamples).

Every resize is one antialiased bilinear PIL resample of only the region that is kept (PIL's
``box``): the pixels of resizing the whole image and cropping afterwards (to +-1 grey level of
rounding), for less work. JPEGs are decoded at a reduced size (libjpeg's DCT scaling, PIL's
``draft``, as ``Image.thumbnail`` does) when the region stays at least ``DRAFT_GAP`` times the
output size, so the final resample still does the antialiasing: about 2x faster on large
photos, within a mean 0.6 and a 99th percentile 6 grey levels of decoding at full size (measured
on photos; the eval view of ImageNet-sized images, shorter side < 1024, is never reduced).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

EVAL_RESIZE = 256  # the evaluation view: shorter side resized to this ...
EVAL_CROP = 224  # ... then this centre crop
DRAFT_GAP = 2.0  # decode JPEGs reduced only while the kept region stays this many times the output

Box = tuple[float, float, float, float]  # (left, top, right, bottom) in pixels of the full image


def default_threads() -> int:
    """Decoding threads: the run's torch threads (its share of the cores, set by embreg.run from
    the launcher), at most 8."""
    return max(1, min(8, torch.get_num_threads()))


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the file's header, without decoding the pixels."""
    with Image.open(path) as img:
        return img.size


def as_indices(key: slice | Sequence[int] | np.ndarray | torch.Tensor, n: int) -> np.ndarray:
    """A slice, a list of ints or a 1-D integer array / tensor as an int64 index array."""
    if isinstance(key, slice):
        return np.arange(n, dtype=np.int64)[key]
    idx = key.cpu().numpy() if isinstance(key, torch.Tensor) else np.asarray(key)
    if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
        raise TypeError(f"index with a slice or a 1-D integer list / array / tensor, got {type(key).__name__}")
    return idx.astype(np.int64, copy=False)


def decode_region(path: str, box: Box, out: tuple[int, int], flip_x: bool = False, flip_y: bool = False) -> np.ndarray:
    """The region ``box`` of the image at ``path`` resized to ``out`` = (width, height) with
    antialiased bilinear resampling, as RGB. -> (height, width, 3) uint8"""
    with Image.open(path) as img:
        width = img.width
        factor = min((box[2] - box[0]) / out[0], (box[3] - box[1]) / out[1]) / DRAFT_GAP
        scale = 1.0
        if img.format == "JPEG" and factor >= 2:
            drafted = img.draft(None, (math.ceil(img.width / factor), math.ceil(img.height / factor)))
            if drafted is not None:
                scale = width / drafted[1][2]
        if img.mode not in ("RGB", "L"):  # CMYK, palette, ...: resample in RGB
            img = img.convert("RGB")
        region = img.resize(out, Image.Resampling.BILINEAR, box=tuple(v / scale for v in box))
    if flip_x:
        region = region.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if flip_y:
        region = region.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    return np.array(region.convert("RGB"))  # a writable copy, for torch.from_numpy


def eval_box(width: int, height: int, crop: int = EVAL_CROP) -> Box:
    """The region of a ``width`` x ``height`` image that ``Resize(256)`` + ``CenterCrop(224)``
    keep, in pixels of the full image (torchvision's sizes and rounding); for another ``crop``
    the resize keeps the same 256 / 224 ratio."""
    resize = EVAL_RESIZE if crop == EVAL_CROP else round(crop * EVAL_RESIZE / EVAL_CROP)
    short, long = min(width, height), max(width, height)
    new_long = int(resize * long / short)
    new_w, new_h = (resize, new_long) if width <= height else (new_long, resize)
    left, top = int(round((new_w - crop) / 2.0)), int(round((new_h - crop) / 2.0))
    sx, sy = width / new_w, height / new_h
    return left * sx, top * sy, (left + crop) * sx, (top + crop) * sy


class LazyImages:
    """Image files under ``root`` (relative ``files``, (width, height) ``sizes``) that index like
    a uint8 (n, 3, 224, 224) tensor of their evaluation views, decoded on demand.

    ``files`` is kept as a bytes array (``os.fsencode``; ImageNet's 1.28M paths take 50 MB
    instead of 190 MB as a str array); ``file(i)`` gives one back as a str."""

    def __init__(self, root: Path, files: Sequence[str] | np.ndarray, sizes: torch.Tensor,
                 threads: int | None = None, crop: int = EVAL_CROP) -> None:
        self.root = Path(root)
        if isinstance(files, np.ndarray) and files.dtype.kind == "S":
            self.files = files
        else:
            self.files = np.array([os.fsencode(f) for f in files], dtype=np.bytes_)
        self.sizes = torch.as_tensor(sizes, dtype=torch.long).reshape(-1, 2)
        if len(self.files) != len(self.sizes):
            raise ValueError(f"{len(self.files)} files but {len(self.sizes)} sizes")
        self.threads = threads or default_threads()
        self.crop = crop  # side of the evaluation view (and the default crop size)

    def with_crop(self, crop: int) -> LazyImages:
        """The same images with an evaluation view of side ``crop`` (resize in ratio 256 / 224)."""
        return LazyImages(self.root, self.files, self.sizes, self.threads, crop)

    def __len__(self) -> int:
        return len(self.files)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), 3, self.crop, self.crop))

    @property
    def dtype(self) -> torch.dtype:
        return torch.uint8

    def file(self, i: int) -> str:
        """Image ``i``'s path relative to ``root``."""
        return os.fsdecode(self.files[i])

    def path(self, i: int) -> str:
        return str(self.root / self.file(i))

    def __getitem__(self, key: slice | Sequence[int] | np.ndarray | torch.Tensor) -> torch.Tensor:
        """The evaluation views of the images at ``key``. -> (m, 3, crop, crop) uint8"""
        idx = as_indices(key, len(self))
        return self._decode(idx, self.crop, lambda i, k: (eval_box(*self.sizes[i].tolist(), self.crop), False, False))

    def take(self, key: slice | Sequence[int] | np.ndarray | torch.Tensor) -> LazyImages:
        """The images at ``key`` (nothing is decoded)."""
        idx = as_indices(key, len(self))
        return LazyImages(self.root, self.files[idx], self.sizes[torch.from_numpy(idx)], self.threads, self.crop)

    def aspect(self, key: slice | Sequence[int] | np.ndarray | torch.Tensor) -> torch.Tensor:
        """Width / height of the images at ``key``. -> (m,) float32"""
        wh = self.sizes[torch.from_numpy(as_indices(key, len(self)))].float()
        return wh[:, 0] / wh[:, 1]

    def crops(self, key: slice | Sequence[int] | np.ndarray | torch.Tensor, theta: torch.Tensor,
              out_size: int) -> torch.Tensor:
        """Crops of the full images at ``key``, resized to ``out_size`` squares. -> (m, 3, s, s) uint8

        ``theta[k]`` is an axis-aligned (2, 3) ``affine_grid`` matrix (align_corners=False)
        mapping output to input coordinates in [-1, 1]: x_in = sx * x_out + tx and
        y_in = sy * y_out + ty, so the crop is the box centred at ((tx + 1) / 2 W, (ty + 1) / 2 H)
        of size |sx| W x |sy| H, flipped where sx (sy) < 0. Crops are meant to lie inside the
        image, as random-resized-crop draws them; a box reaching outside is clipped to it.
        """
        idx = as_indices(key, len(self))
        theta = torch.as_tensor(theta, dtype=torch.float64).cpu()
        if theta.shape != (len(idx), 2, 3):
            raise ValueError(f"theta must be ({len(idx)}, 2, 3), got {tuple(theta.shape)}")
        if bool((theta[:, 0, 1] != 0).any() or (theta[:, 1, 0] != 0).any()):
            raise ValueError("crops take axis-aligned thetas (no rotation or shear)")
        params = torch.stack([theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2]], 1).tolist()

        def box(i: int, k: int) -> tuple[Box, bool, bool]:
            (w, h), (sx, tx, sy, ty) = self.sizes[i].tolist(), params[k]
            left, right = (tx - abs(sx) + 1) / 2 * w, (tx + abs(sx) + 1) / 2 * w
            top, bottom = (ty - abs(sy) + 1) / 2 * h, (ty + abs(sy) + 1) / 2 * h
            return (max(left, 0.0), max(top, 0.0), min(right, w), min(bottom, h)), sx < 0, sy < 0

        return self._decode(idx, out_size, box)

    def _decode(self, idx: np.ndarray, size: int, region: Callable[[int, int], tuple[Box, bool, bool]]) -> torch.Tensor:
        """Decode image ``idx[k]``'s ``region(i, k)`` (box, flip_x, flip_y) at ``size`` into row k."""
        out = torch.empty((len(idx), 3, size, size), dtype=torch.uint8)

        def one(k: int) -> None:
            i = int(idx[k])
            box, flip_x, flip_y = region(i, k)
            out[k] = torch.from_numpy(decode_region(self.path(i), box, (size, size), flip_x, flip_y)).permute(2, 0, 1)

        with ThreadPoolExecutor(min(self.threads, max(1, len(idx)))) as pool:
            list(pool.map(one, range(len(idx))))  # list(): re-raise a worker's exception here
        return out
