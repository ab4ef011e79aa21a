"""Augmentation on batched tensors: one ``grid_sample`` crops, resizes and flips a whole
batch, and the photometric transforms (colour jitter, grayscale, blur, solarization) act on
the batch at once, on whatever device the batch is on (the GPU in the paper-scale profiles),
so two CPU cores are not starved by per-image PIL transforms in workers.

Datasets too large for memory (ImageNet) hand over a ``LazyBatch`` instead of a tensor: the
crop boxes are drawn here exactly as for a tensor, the files are decoded and cut on the CPU
(see ``embreg.data.imagefolder``), and everything after the crop runs on the device.

All randomness comes from an explicit ``torch.Generator`` (on the CPU; parameters are moved to
the batch's device) so runs are reproducible and the generator's state can be checkpointed.
A transform whose probability is 0 draws nothing, so turning one on never changes the others'
draws in profiles that leave it off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

# ITU-R 601 luma, as torchvision's rgb_to_grayscale
_LUMA = (0.2989, 0.587, 0.114)


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
        return images[idx].to(device)
    return LazyBatch(images, idx, device)


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=gen) * (hi - lo) + lo


def _coin(n: int, p: float, gen: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=gen) < p


def crop_flip_thetas(
    n: int, spec: AugmentSpec, gen: torch.Generator, aspect: torch.Tensor | None = None
) -> torch.Tensor:
    """Affine matrices for random-resized-crop (+ horizontal flip). -> (n, 2, 3)

    In ``affine_grid``'s normalized coordinates a crop covering a fraction (sx, sy) of the
    image centred at (tx, ty) is the map x_in = sx * x_out + tx; a flip negates sx. The area
    fraction and the aspect ratio are drawn as torchvision's RandomResizedCrop does; for
    images of width / height ``aspect`` (None: square) the ratio is the crop's in pixels.
    """
    area = _uniform(n, *spec.crop_scale, gen)
    log_ratio = _uniform(n, math.log(spec.crop_ratio[0]), math.log(spec.crop_ratio[1]), gen)
    ratio = torch.exp(log_ratio)
    if aspect is not None:  # pixel ratio r on a W x H image: sx = sqrt(A r H / W), sy = sqrt(A W / (H r))
        ratio = ratio / aspect.float()
    sx = torch.sqrt(area * ratio).clamp(max=1.0)
    sy = torch.sqrt(area / ratio).clamp(max=1.0)
    tx = (torch.rand(n, generator=gen) * 2 - 1) * (1 - sx)
    ty = (torch.rand(n, generator=gen) * 2 - 1) * (1 - sy)
    if spec.flip:
        sign = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
        sx = sx * sign
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = sx, tx
    theta[:, 1, 1], theta[:, 1, 2] = sy, ty
    return theta


def _per_image(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.to(like.device, like.dtype).view(-1, 1, 1, 1)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """Luma of RGB images, kept as 3 channels (single-channel images are returned as they are)."""
    if x.shape[1] != 3:
        return x
    w = torch.tensor(_LUMA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True).expand_as(x)


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(dim=1)
    maxc, _ = x.max(dim=1)
    minc, _ = x.min(dim=1)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    h = torch.where(maxc == r, (g - b) / safe, torch.where(maxc == g, 2 + (b - r) / safe, 4 + (r - g) / safe))
    h = torch.where(delta > 0, (h / 6) % 1.0, torch.zeros_like(h))
    s = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc))
    return torch.stack((h, s, maxc), dim=1)


def _hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    h, s, v = x.unbind(dim=1)
    k = torch.stack([(5 + 6 * h) % 6, (3 + 6 * h) % 6, (1 + 6 * h) % 6], dim=1)  # r, g, b
    v, s = v.unsqueeze(1), s.unsqueeze(1)
    return v - v * s * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def jitter(x: torch.Tensor, spec: AugmentSpec, gen: torch.Generator) -> torch.Tensor:
    """Per-image colour jitter on [0, 1] images, applied with probability ``jitter_prob``:
    brightness, then contrast (around the image mean), then saturation and hue when the spec
    asks for them (RGB only). (b, c, h, w) -> same

    torchvision's ColorJitter shuffles the four per image; here the order is fixed.
    """
    n = x.shape[0]
    apply = _per_image(_coin(n, spec.jitter_prob, gen).float(), x)
    b = _per_image(_uniform(n, 1 - spec.brightness, 1 + spec.brightness, gen), x)
    c = _per_image(_uniform(n, 1 - spec.contrast, 1 + spec.contrast, gen), x)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    out = ((x * b - mean * b) * c + mean * b).clamp(0, 1)
    if x.shape[1] == 3 and spec.saturation > 0:
        s = _per_image(_uniform(n, 1 - spec.saturation, 1 + spec.saturation, gen), x)
        gray = grayscale(out)
        out = (gray + s * (out - gray)).clamp(0, 1)
    if x.shape[1] == 3 and spec.hue > 0:
        shift = _uniform(n, -spec.hue, spec.hue, gen).to(x.device, x.dtype).view(-1, 1, 1)
        hsv = _rgb_to_hsv(out)
        hsv = torch.stack((((hsv[:, 0] + shift) % 1.0), hsv[:, 1], hsv[:, 2]), dim=1)
        out = _hsv_to_rgb(hsv).clamp(0, 1)
    return apply * out + (1 - apply) * x


def random_grayscale(x: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    apply = _per_image(_coin(x.shape[0], p, gen).float(), x)
    return apply * grayscale(x) + (1 - apply) * x


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with one sigma (pixels) per image; the kernel spans about 10% of
    the image side (odd), as in BYOL / VICReg (23 px at 224), reflect-padded. (b,c,h,w) -> same"""
    n, c, h, w = x.shape
    size = max(3, int(0.1 * min(h, w)) // 2 * 2 + 1)
    offsets = torch.arange(size, device=x.device, dtype=x.dtype) - size // 2
    s = sigma.to(x.device, x.dtype).view(n, 1)
    kernel = torch.exp(-(offsets.view(1, -1) ** 2) / (2 * s**2))
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (n*c, size)
    flat = x.reshape(1, n * c, h, w)
    pad = size // 2
    flat = F.conv2d(F.pad(flat, (pad, pad, 0, 0), mode="reflect"), kernel.view(n * c, 1, 1, size), groups=n * c)
    flat = F.conv2d(F.pad(flat, (0, 0, pad, pad), mode="reflect"), kernel.view(n * c, 1, size, 1), groups=n * c)
    return flat.view(n, c, h, w)


def random_blur(x: torch.Tensor, p: float, sigma: tuple[float, float], gen: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    apply = _coin(n, p, gen)
    s = _uniform(n, *sigma, gen)
    if not bool(apply.any()):
        return x
    out = x.clone()
    picked = apply.nonzero().squeeze(1)
    out[picked.to(x.device)] = gaussian_blur(x[picked.to(x.device)], s[picked])
    return out


def random_solarize(x: torch.Tensor, p: float, gen: torch.Generator, threshold: float = 0.5) -> torch.Tensor:
    apply = _per_image(_coin(x.shape[0], p, gen).float(), x)
    return apply * torch.where(x >= threshold, 1 - x, x) + (1 - apply) * x


class Normalizer:
    """uint8 (b, c, h, w) -> standardized float, with the dataset's channel statistics."""

    def __init__(self, mean: list[float], std: list[float]) -> None:
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)

    def to_unit(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().div_(255.0)

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.standardize(self.to_unit(x))


def _crop(x: torch.Tensor | LazyBatch, spec: AugmentSpec, norm: Normalizer, gen: torch.Generator) -> torch.Tensor:
    """Random-resized-crop + flip, as [0, 1] floats on the batch's device."""
    if isinstance(x, LazyBatch):
        theta = crop_flip_thetas(len(x.idx), spec, gen, aspect=x.images.aspect(x.idx))
        size = spec.out_size or x.images.shape[-1]
        return norm.to_unit(x.images.crops(x.idx, theta, size).to(x.device))
    unit = norm.to_unit(x)
    theta = crop_flip_thetas(unit.shape[0], spec, gen).to(unit.device)
    n, c, h, w = unit.shape
    out_shape = [n, c, spec.out_size, spec.out_size] if spec.out_size else [n, c, h, w]
    grid = F.affine_grid(theta, out_shape, align_corners=False)
    return F.grid_sample(unit, grid, mode="bilinear", padding_mode="border", align_corners=False)


def augment(
    x: torch.Tensor | LazyBatch, spec: AugmentSpec, norm: Normalizer, gen: torch.Generator,
    jitter_on: bool = True, view: int = 0,
) -> torch.Tensor:
    """One random view of a uint8 batch (or a ``LazyBatch``). (b, c, h, w) -> (b, c, s, s) float

    ``view`` (0 or 1) picks the per-view blur and solarization probabilities; ``jitter_on=False``
    keeps only crop and flip (the fine-tuning augmentation)."""
    out = _crop(x, spec, norm, gen)
    if jitter_on:
        out = jitter(out, spec, gen)
        if spec.grayscale_prob > 0:
            out = random_grayscale(out, spec.grayscale_prob, gen)
        if spec.blur_prob[view] > 0:
            out = random_blur(out, spec.blur_prob[view], spec.blur_sigma, gen)
        if spec.solarize_prob[view] > 0:
            out = random_solarize(out, spec.solarize_prob[view], gen)
    return norm.standardize(out)


def two_views(
    x: torch.Tensor | LazyBatch, spec: AugmentSpec, norm: Normalizer, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent views of the same batch, VICReg-style (the second with the second
    view's blur and solarization probabilities). uint8 (b,c,h,w) -> 2 x float"""
    return augment(x, spec, norm, gen, view=0), augment(x, spec, norm, gen, view=1)
