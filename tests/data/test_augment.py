"""Batched augmentation: geometry is exact where it can be checked, randomness is seeded."""

from __future__ import annotations

import torch

from embreg.data import AugmentSpec, Normalizer, augment, two_views
from embreg.data.augment import crop_flip_thetas, draw, jitter, thetas, view_columns

NORM = Normalizer([0.5], [0.25])


def _batch(n: int = 8) -> torch.Tensor:
    return torch.randint(0, 256, (n, 1, 28, 28), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


def test_full_crop_without_flip_or_jitter_is_the_normalized_image():
    x = _batch()
    spec = AugmentSpec(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip=False, jitter_prob=0.0)
    out = augment(x, spec, NORM, torch.Generator().manual_seed(1))
    assert torch.allclose(out, NORM(x), atol=1e-5)


def test_flip_mirrors_columns():
    x = _batch()
    spec = AugmentSpec(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip=True, jitter_prob=0.0)
    gen = torch.Generator().manual_seed(3)
    # the same draws as augment's: one matrix with the view's columns
    theta = thetas(draw(len(x), view_columns(spec, 1), torch.Generator().manual_seed(3)), spec)
    out = augment(x, spec, NORM, gen)
    flipped = theta[:, 0, 0] < 0
    assert 0 < int(flipped.sum()) < len(x)
    assert torch.allclose(out[flipped], NORM(x)[flipped].flip(-1), atol=1e-5)
    assert torch.allclose(out[~flipped], NORM(x)[~flipped], atol=1e-5)


def test_crops_stay_inside_the_image_and_cover_the_requested_area():
    spec = AugmentSpec(crop_scale=(0.25, 0.5))
    theta = crop_flip_thetas(4096, spec, torch.Generator().manual_seed(0))
    sx, sy = theta[:, 0, 0].abs(), theta[:, 1, 1]
    assert torch.all(sx.abs() + theta[:, 0, 2].abs() <= 1 + 1e-6)
    assert torch.all(sy + theta[:, 1, 2].abs() <= 1 + 1e-6)
    area = sx * sy
    assert area.min() >= 0.25 - 1e-5 and area.max() <= 0.5 + 1e-5


def test_views_are_seeded_and_differ():
    x = _batch()
    a1, a2 = two_views(x, AugmentSpec(), NORM, torch.Generator().manual_seed(7))
    b1, b2 = two_views(x, AugmentSpec(), NORM, torch.Generator().manual_seed(7))
    assert torch.equal(a1, b1) and torch.equal(a2, b2)
    assert not torch.allclose(a1, a2)
    assert a1.shape == (8, 1, 28, 28) and a1.dtype == torch.float32


def test_jitter_keeps_range_and_respects_probability():
    x = torch.rand(64, 1, 28, 28)
    out = jitter(x, AugmentSpec(jitter_prob=0.0), torch.Generator().manual_seed(0))
    assert torch.equal(out, x)
    out = jitter(x, AugmentSpec(jitter_prob=1.0), torch.Generator().manual_seed(0))
    assert out.min() >= 0 and out.max() <= 1 and not torch.allclose(out, x)


def test_a_view_draws_its_parameters_in_one_call_and_a_part_is_a_slice_of_the_whole():
    """One (n, K) matrix of uniforms per view (one copy to the device); a data-parallel rank's
    part of the batch gets exactly the rows one process would make, and the generator advances
    as for the whole batch."""
    from embreg.data.augment import view_columns

    x = _batch(12)
    spec = AugmentSpec(blur_prob=(1.0, 0.1), solarize_prob=(0.0, 0.2), grayscale_prob=0.2)
    gen, replay = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    whole = two_views(x, spec, NORM, gen)
    for view in (0, 1):
        torch.rand(12, len(view_columns(spec, 1, view)), generator=replay)
    assert torch.equal(gen.get_state(), replay.get_state())
    gen = torch.Generator().manual_seed(5)
    part = two_views(x, spec, NORM, gen, part=slice(4, 8))
    assert all(torch.equal(p, w[4:8]) for p, w in zip(part, whole, strict=True))
    assert torch.equal(gen.get_state(), replay.get_state())
    assert view_columns(spec, 1, 0)[-2:] == ["blur", "sigma"] and view_columns(spec, 1, 1)[-1] == "solarize"
