"""Augmentation on batched tensors: one ``grid_sample`` crops, resizes and flips a whole
batch, and the photometric transforms (colour jitter, grayscale, blur, solarization) act on
the batch at once, on whatever device the batch is on (the GPU in the paper-scale profiles),
so two CPU cores are not starved by per-image PIL transforms in workers.

Datasets too large for memory (ImageNet) hand over a ``LazyBatch`` instead of a tensor: the
crop boxes are drawn here exactly as for a tensor, the files are decoded and cut on the CPU
(see ``embreg.data.imagefolder``), and everything after the crop runs on the device.

All randomness comes from an explicit ``torch.Generator`` on the CPU, so runs are reproducible,
the same on every device, and the generator's state can be checkpointed. Every random number a
view needs is drawn in one call (``draw_view``: one (n, K) matrix of uniforms, a column per
parameter) and reaches the batch's device in one copy from pinned memory that does not wait for
the device; the transforms turn columns into parameters there. Nothing branches on the draws, so
the batch's shapes never depend on them (the blur is computed for every image and kept where
drawn). A transform whose probability is 0 has no column, so turning one on never changes the
others' draws in profiles that leave it off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from embreg.data.colour import _hsv_to_rgb, _rgb_to_hsv, gaussian_blur, grayscale


@dataclass(frozen=True)
class AugmentSpec:
    crop_scale: tuple[float, float] = (0.25, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    jitter_prob: float = 0.8  # colour jitter, as in VICReg's ColorJitter(0.4, 0.4, 0.2, 0.1) p=0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.0  # VICReg: 0.2 (the embedded default leaves colour alone: grey images)
    hue: float = 0.0  # VICReg: 0.1, a fraction of a full turn
    grayscale_prob: float = 0.0  # VICReg: 0.2
    blur_prob: tuple[float, float] = (0.0, 0.0)  # per view; VICReg: (1.0, 0.1)
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # in pixels of the output view
    solarize_prob: tuple[float, float] = (0.0, 0.0)  # per view; VICReg: (0.0, 0.2)
    out_size: int | None = None  # side of the output views; None: the input's size


@dataclass
class LazyBatch:
    """A batch of images that are not in memory: ``images`` must offer ``crops(idx, theta,
    out_size)`` (uint8 crops) and ``aspect(idx)`` (width / height), as
    ``embreg.data.imagefolder.LazyImages`` does."""

    images: Any
    idx: torch.Tensor
    device: torch.device

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.idx), *self.images.shape[1:])


def batch_images(images: Any, idx: torch.Tensor, device: torch.device) -> torch.Tensor | LazyBatch:
    """The images at ``idx`` for ``augment``: a uint8 tensor on ``device``, or a ``LazyBatch``
    when ``images`` is not a tensor (decoded only once the crops are known)."""
    if isinstance(images, torch.Tensor):
        return to_device(images[idx], device)
    return LazyBatch(images, idx, device)


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``x`` on ``device``; to a GPU from pinned memory without waiting for it (a copy from
    pageable memory would wait for the GPU to finish its queued work)."""
    if device.type != "cuda" or x.device.type != "cpu":
        return x.to(device)
    return x.pin_memory().to(device, non_blocking=True)


def view_columns(spec: AugmentSpec, channels: int, view: int = 0, jitter_on: bool = True) -> list[str]:
    """The uniforms a view draws, one column each, in order: crop (area, ratio, centre), flip,
    colour jitter (applied?, brightness, contrast, then saturation and hue for RGB images when
    asked for), grayscale, blur (applied?, sigma) and solarization, each only when it can act."""
    cols = ["area", "ratio", "tx", "ty"] + (["flip"] if spec.flip else [])
    if not jitter_on:
        return cols
    cols += ["jitter", "brightness", "contrast"]
    cols += ["saturation"] if channels == 3 and spec.saturation > 0 else []
    cols += ["hue"] if channels == 3 and spec.hue > 0 else []
    cols += ["grayscale"] if spec.grayscale_prob > 0 else []
    cols += ["blur", "sigma"] if spec.blur_prob[view] > 0 else []
    cols += ["solarize"] if spec.solarize_prob[view] > 0 else []
    return cols


@dataclass
class Draws:
    """One view's uniforms in [0, 1): ``u`` (n, K), column ``cols[name]`` per parameter."""

    u: torch.Tensor
    cols: dict[str, int]

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.u[:, self.cols[name]]

    def rows(self, part: slice) -> Draws:
        return Draws(self.u[part], self.cols)

    def to(self, device: torch.device) -> Draws:
        return Draws(to_device(self.u, device), self.cols)


def draw(n: int, cols: list[str], gen: torch.Generator) -> Draws:
    """``n`` rows of uniforms for ``cols`` from ``gen``, in one call."""
    return Draws(torch.rand(n, len(cols), generator=gen), {c: i for i, c in enumerate(cols)})


def _between(u: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    return u * (hi - lo) + lo


def thetas(d: Draws, spec: AugmentSpec, aspect: torch.Tensor | None = None) -> torch.Tensor:
    """Affine matrices for random-resized-crop (+ horizontal flip), on ``d``'s device. -> (n, 2, 3)

    In ``affine_grid``'s normalized coordinates a crop covering a fraction (sx, sy) of the
    image centred at (tx, ty) is the map x_in = sx * x_out + tx; a flip negates sx. The area
    fraction and the aspect ratio are drawn as torchvision's RandomResizedCrop does; for
    images of width / height ``aspect`` (None: square) the ratio is the crop's in pixels.
    """
    area = _between(d["area"], *spec.crop_scale)
    ratio = torch.exp(_between(d["ratio"], math.log(spec.crop_ratio[0]), math.log(spec.crop_ratio[1])))
    if aspect is not None:  # pixel ratio r on a W x H image: sx = sqrt(A r H / W), sy = sqrt(A W / (H r))
        ratio = ratio / aspect.to(ratio.device).float()
    sx = torch.sqrt(area * ratio).clamp(max=1.0)
    sy = torch.sqrt(area / ratio).clamp(max=1.0)
    tx = (d["tx"] * 2 - 1) * (1 - sx)
    ty = (d["ty"] * 2 - 1) * (1 - sy)
    if spec.flip:
        sx = sx * torch.where(d["flip"] < 0.5, -1.0, 1.0)
    zero = torch.zeros_like(sx)
    return torch.stack([torch.stack([sx, zero, tx], 1), torch.stack([zero, sy, ty], 1)], 1)


def crop_flip_thetas(
    n: int, spec: AugmentSpec, gen: torch.Generator, aspect: torch.Tensor | None = None
) -> torch.Tensor:
    """``thetas`` of ``n`` fresh crop (+ flip) draws from ``gen``. -> (n, 2, 3)"""
    return thetas(draw(n, view_columns(spec, 1, jitter_on=False), gen), spec, aspect)


def _per_image(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.to(like.device, like.dtype).view(-1, 1, 1, 1)


def color_jitter(x: torch.Tensor, spec: AugmentSpec, d: Draws) -> torch.Tensor:
    """Per-image colour jitter on [0, 1] images, applied with probability ``jitter_prob``:
    brightness, then contrast (around the image mean), then saturation and hue when the spec
    asks for them (RGB only), from ``d``'s columns. (b, c, h, w) -> same

    torchvision's ColorJitter shuffles the four per image; here the order is fixed.
    """
    apply = _per_image((d["jitter"] < spec.jitter_prob).float(), x)
    b = _per_image(_between(d["brightness"], 1 - spec.brightness, 1 + spec.brightness), x)
    c = _per_image(_between(d["contrast"], 1 - spec.contrast, 1 + spec.contrast), x)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    out = ((x * b - mean * b) * c + mean * b).clamp(0, 1)
    if "saturation" in d.cols:
        s = _per_image(_between(d["saturation"], 1 - spec.saturation, 1 + spec.saturation), x)
        gray = grayscale(out)
        out = (gray + s * (out - gray)).clamp(0, 1)
    if "hue" in d.cols:
        shift = _between(d["hue"], -spec.hue, spec.hue).to(x.dtype).view(-1, 1, 1)
        hsv = _rgb_to_hsv(out)
        hsv = torch.stack((((hsv[:, 0] + shift) % 1.0), hsv[:, 1], hsv[:, 2]), dim=1)
        out = _hsv_to_rgb(hsv).clamp(0, 1)
    return apply * out + (1 - apply) * x


def _where(apply: torch.Tensor, changed: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``changed`` for the images where ``apply`` (n,) holds, ``x`` elsewhere."""
    return torch.where(apply.view(-1, 1, 1, 1), changed, x)


def photometric(x: torch.Tensor, spec: AugmentSpec, d: Draws, view: int = 0) -> torch.Tensor:
    """Colour jitter, then grayscale, blur and solarization with the view's probabilities, each
    from its columns of ``d`` (on ``x``'s device). [0, 1] (b, c, h, w) -> same"""
    out = color_jitter(x, spec, d)
    if "grayscale" in d.cols:
        out = _where(d["grayscale"] < spec.grayscale_prob, grayscale(out), out)
    if "blur" in d.cols:  # every image blurred, kept where drawn: no shape depends on the draw
        out = _where(d["blur"] < spec.blur_prob[view], gaussian_blur(out, _between(d["sigma"], *spec.blur_sigma)), out)
    if "solarize" in d.cols:
        out = _where(d["solarize"] < spec.solarize_prob[view], torch.where(out >= 0.5, 1 - out, out), out)
    return out


def jitter(x: torch.Tensor, spec: AugmentSpec, gen: torch.Generator) -> torch.Tensor:
    """``color_jitter`` with fresh draws from ``gen``."""
    cols = [c for c in view_columns(spec, x.shape[1]) if c in ("jitter", "brightness", "contrast", "saturation", "hue")]
    return color_jitter(x, spec, draw(x.shape[0], cols, gen).to(x.device))


def random_grayscale(x: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    return _where(draw(x.shape[0], ["p"], gen).to(x.device)["p"] < p, grayscale(x), x)


def random_solarize(x: torch.Tensor, p: float, gen: torch.Generator, threshold: float = 0.5) -> torch.Tensor:
    return _where(draw(x.shape[0], ["p"], gen).to(x.device)["p"] < p, torch.where(x >= threshold, 1 - x, x), x)


class Normalizer:
    """uint8 (b, c, h, w) -> standardized float, with the dataset's channel statistics."""

    def __init__(self, mean: list[float], std: list[float]) -> None:
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)

    def to_unit(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().div_(255.0)

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean.device != x.device:  # moved once: a copy to a GPU every call would wait for it
            self.mean, self.std = self.mean.to(x.device), self.std.to(x.device)
        return (x - self.mean) / self.std

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.standardize(self.to_unit(x))


def _crop(x: torch.Tensor | LazyBatch, spec: AugmentSpec, norm: Normalizer, d: Draws, cpu: Draws) -> torch.Tensor:
    """Random-resized-crop + flip, as [0, 1] floats on the batch's device (``d`` there, ``cpu``
    the same draws on the CPU, where a ``LazyBatch``'s crops are cut)."""
    if isinstance(x, LazyBatch):
        theta = thetas(cpu, spec, aspect=x.images.aspect(x.idx))
        size = spec.out_size or x.images.shape[-1]
        # decoded and cut on the CPU; to the GPU from pinned memory, without waiting for it
        return norm.to_unit(to_device(x.images.crops(x.idx, theta, size), x.device))
    unit = norm.to_unit(x)
    n, c, h, w = unit.shape
    out_shape = [n, c, spec.out_size, spec.out_size] if spec.out_size else [n, c, h, w]
    grid = F.affine_grid(thetas(d, spec), out_shape, align_corners=False)
    return F.grid_sample(unit, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _rows(x: torch.Tensor | LazyBatch, part: slice | None) -> torch.Tensor | LazyBatch:
    if part is None:
        return x
    return LazyBatch(x.images, x.idx[part], x.device) if isinstance(x, LazyBatch) else x[part]


def augment(
    x: torch.Tensor | LazyBatch, spec: AugmentSpec, norm: Normalizer, gen: torch.Generator,
    jitter_on: bool = True, view: int = 0, part: slice | None = None,
) -> torch.Tensor:
    """One random view of a uint8 batch (or a ``LazyBatch``). (b, c, h, w) -> (b, c, s, s) float

    ``view`` (0 or 1) picks the per-view blur and solarization probabilities; ``jitter_on=False``
    keeps only crop and flip (the fine-tuning augmentation). With ``part`` the draws are made
    for the whole batch (the generator advances as for all of it) and only those rows are
    augmented: a data-parallel rank makes its slice of one process's views."""
    n, c = x.shape[0], x.shape[1]
    cpu = draw(n, view_columns(spec, c, view, jitter_on), gen)
    if part is not None:
        cpu = cpu.rows(part)
    x = _rows(x, part)
    d = cpu.to(x.device)
    out = _crop(x, spec, norm, d, cpu)
    if jitter_on:
        out = photometric(out, spec, d, view)
    return norm.standardize(out)


def two_views(
    x: torch.Tensor | LazyBatch, spec: AugmentSpec, norm: Normalizer, gen: torch.Generator,
    part: slice | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent views of the same batch, VICReg-style (the second with the second
    view's blur and solarization probabilities); ``part``: only those rows (see ``augment``).
    uint8 (b,c,h,w) -> 2 x float"""
    return augment(x, spec, norm, gen, view=0, part=part), augment(x, spec, norm, gen, view=1, part=part)
