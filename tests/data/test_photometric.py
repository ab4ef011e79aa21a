"""The batched photometric transforms against torchvision's per-image functional ones, and the
guarantees the pipeline relies on (a transform at probability 0 draws nothing)."""

from __future__ import annotations

import importlib

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from embreg.data import AugmentSpec, LazyBatch, Normalizer, two_views

A = importlib.import_module("embreg.data.augment")


def images(n: int = 6, size: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_grayscale_is_torchvisions():
    x = images()
    torch.testing.assert_close(A.grayscale(x), TF.rgb_to_grayscale(x, num_output_channels=3), atol=1e-6, rtol=0)


def test_hsv_round_trip():
    x = images()
    torch.testing.assert_close(A._hsv_to_rgb(A._rgb_to_hsv(x)), x, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["saturation", "hue"])
def test_jitter_matches_torchvision_per_image(kind):
    """Brightness and contrast pinned to 1: each image gets torchvision's adjust_saturation /
    adjust_hue with the factor this image drew."""
    x = images()
    spec = AugmentSpec(jitter_prob=1.0, brightness=0.0, contrast=0.0, **{kind: 0.3})
    out = A.jitter(x, spec, torch.Generator().manual_seed(1))
    # replay the draws: one (n, 4) matrix, columns apply, brightness, contrast, then ours
    factors = torch.rand(len(x), 4, generator=torch.Generator().manual_seed(1))[:, 3] * 0.6 - 0.3
    for i, f in enumerate(factors.tolist()):
        ref = TF.adjust_saturation(x[i], 1 + f) if kind == "saturation" else TF.adjust_hue(x[i], f)
        torch.testing.assert_close(out[i], ref, atol=1e-4, rtol=0)


def test_blur_matches_torchvision():
    x = images(size=40)
    sigma = torch.tensor([0.1, 0.5, 1.0, 1.5, 2.0, 0.8])
    out = A.gaussian_blur(x, sigma)
    size = 5  # 10% of 40, odd
    for i, s in enumerate(sigma.tolist()):
        torch.testing.assert_close(out[i], TF.gaussian_blur(x[i], [size, size], [s, s]), atol=1e-5, rtol=0)


def test_solarize_matches_torchvision():
    x = images()
    out = A.random_solarize(x, 1.0, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, TF.solarize(x, 0.5))


def test_probabilities_select_images():
    x = images(n=400, size=8)
    gray = A.random_grayscale(x, 0.2, torch.Generator().manual_seed(0))
    changed = (gray != x).flatten(1).any(1).float().mean().item()
    assert 0.12 < changed < 0.28
    sol = A.random_solarize(x, 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(sol, x)


def test_views_use_their_own_blur_and_solarize_probability():
    """VICReg's asymmetric views: blur always on view 1 and never on view 2 here."""
    x = (images(n=8, size=32) * 255).to(torch.uint8)
    spec = AugmentSpec(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip=False, jitter_prob=0.0,
                       blur_prob=(1.0, 0.0), blur_sigma=(2.0, 2.0))
    norm = Normalizer([0.5] * 3, [0.25] * 3)
    v1, v2 = two_views(x, spec, norm, torch.Generator().manual_seed(0))
    plain = norm(x)
    torch.testing.assert_close(v2, plain, atol=1e-5, rtol=0)
    assert (v1 - plain).abs().mean() > 0.05
    torch.testing.assert_close(v1.mean(dim=(2, 3)), plain.mean(dim=(2, 3)), atol=0.05, rtol=0)


def test_zero_probability_draws_nothing():
    """Turning the extra transforms off leaves the random stream exactly as before they existed:
    the same views as the crop/flip/brightness/contrast pipeline alone."""
    x = (images(n=4, size=16) * 255).to(torch.uint8)
    norm = Normalizer([0.5] * 3, [0.25] * 3)
    gen_a, gen_b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = two_views(x, AugmentSpec(), norm, gen_a)
    b = two_views(x, AugmentSpec(saturation=0.0, hue=0.0, grayscale_prob=0.0), norm, gen_b)
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    assert torch.equal(gen_a.get_state(), gen_b.get_state())


def test_out_size_resizes_in_memory_views():
    x = (images(n=3, size=32) * 255).to(torch.uint8)
    v = A.augment(x, AugmentSpec(out_size=16), Normalizer([0.5] * 3, [0.25] * 3), torch.Generator().manual_seed(0))
    assert v.shape == (3, 3, 16, 16)


class _Files:
    """A stand-in for LazyImages over in-memory pictures: crops by grid_sample."""

    def __init__(self, pics: torch.Tensor, aspect: float) -> None:
        self.pics, self._aspect, self.shape = pics, aspect, (len(pics), 3, 20, 20)
        self.calls: list[tuple[torch.Tensor, torch.Tensor, int]] = []

    def aspect(self, idx: torch.Tensor) -> torch.Tensor:
        return torch.full((len(idx),), self._aspect)

    def crops(self, idx: torch.Tensor, theta: torch.Tensor, out_size: int) -> torch.Tensor:
        self.calls.append((idx, theta, out_size))
        grid = torch.nn.functional.affine_grid(theta, [len(idx), 3, out_size, out_size], align_corners=False)
        unit = self.pics[idx].float() / 255
        return (torch.nn.functional.grid_sample(unit, grid, align_corners=False) * 255).round().to(torch.uint8)


def test_lazy_batch_draws_pixel_aspect_crops():
    """For a W x H image the crop's aspect ratio is drawn in pixels (as torchvision's
    RandomResizedCrop): on a 2:1 image a square-pixel crop is half as wide, in normalized units,
    as it is tall."""
    files = _Files((images(n=5, size=12) * 255).to(torch.uint8), aspect=2.0)
    spec = AugmentSpec(crop_scale=(0.25, 0.25), crop_ratio=(1.0, 1.0), flip=False, jitter_prob=0.0)
    v = A.augment(LazyBatch(files, torch.tensor([4, 0, 2]), torch.device("cpu")), spec,
                  Normalizer([0.5] * 3, [0.25] * 3), torch.Generator().manual_seed(0))
    assert v.shape == (3, 3, 20, 20)
    idx, theta, size = files.calls[0]
    assert idx.tolist() == [4, 0, 2] and size == 20
    torch.testing.assert_close(theta[:, 0, 0] * 2, theta[:, 1, 1])
    torch.testing.assert_close(theta[:, 0, 0] * theta[:, 1, 1], torch.full((3,), 0.25))
