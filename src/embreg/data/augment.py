"""Augmentation on batched tensors: one ``grid_sample`` crops, resizes and flips a whole
batch, so two CPU cores are not starved by per-image PIL transforms in workers.

All randomness comes from an explicit ``torch.Generator`` so runs are reproducible and the
generator's state can be checkpointed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentSpec:
    crop_scale: tuple[float, float] = (0.25, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    jitter_prob: float = 0.8  # brightness/contrast jitter, as in VICReg's colour jitter
    brightness: float = 0.4
    contrast: float = 0.4


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=gen) * (hi - lo) + lo


def crop_flip_thetas(n: int, spec: AugmentSpec, gen: torch.Generator) -> torch.Tensor:
    """Affine matrices for random-resized-crop (+ horizontal flip). -> (n, 2, 3)

    In ``affine_grid``'s normalized coordinates a crop covering a fraction (sx, sy) of the
    image centred at (tx, ty) is the map x_in = sx * x_out + tx; a flip negates sx.
    """
    area = _uniform(n, *spec.crop_scale, gen)
    log_ratio = _uniform(n, math.log(spec.crop_ratio[0]), math.log(spec.crop_ratio[1]), gen)
    ratio = torch.exp(log_ratio)
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


def jitter(x: torch.Tensor, spec: AugmentSpec, gen: torch.Generator) -> torch.Tensor:
    """Per-image brightness and contrast jitter on [0, 1] images. (b, c, h, w) -> same"""
    n = x.shape[0]
    apply = (torch.rand(n, generator=gen) < spec.jitter_prob).float().view(n, 1, 1, 1)
    b = _uniform(n, 1 - spec.brightness, 1 + spec.brightness, gen).view(n, 1, 1, 1)
    c = _uniform(n, 1 - spec.contrast, 1 + spec.contrast, gen).view(n, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    out = ((x * b - mean * b) * c + mean * b).clamp(0, 1)
    return apply * out + (1 - apply) * x


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


def augment(
    x: torch.Tensor, spec: AugmentSpec, norm: Normalizer, gen: torch.Generator, jitter_on: bool = True
) -> torch.Tensor:
    """One random view of a uint8 batch. (b, c, h, w) uint8 -> (b, c, h, w) float"""
    unit = norm.to_unit(x)
    theta = crop_flip_thetas(unit.shape[0], spec, gen).to(unit.device)
    grid = F.affine_grid(theta, list(unit.shape), align_corners=False)
    out = F.grid_sample(unit, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if jitter_on:
        out = jitter(out, spec, gen)
    return norm.standardize(out)


def two_views(
    x: torch.Tensor, spec: AugmentSpec, norm: Normalizer, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent views of the same batch, VICReg-style. uint8 (b,c,h,w) -> 2 x float"""
    return augment(x, spec, norm, gen), augment(x, spec, norm, gen)
