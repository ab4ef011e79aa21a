"""SVMax (its bounds, score, loss forms and the fast mean singular value) against NumPy's SVD,
analytic cases (rank one, flat spectrum), gradients, precision paths and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from embreg.registry import UnknownNameError
from embreg.terms import spectral, svmax
from tests.terms.helpers import (
    GRAD_SHAPES,
    SHAPES,
    TIGHT,
    as_float,
    flat_spectrum,
    identity_blocks,
    np_bounds,
    np_mean_singular_value,
    np_svmax_loss,
    rand,
    rank_one_multiples,
    rank_one_same_rows,
    spectrum,
    svd_reference,
)


@pytest.mark.parametrize("shape", SHAPES)
def test_mean_singular_value_matches_numpy(shape):
    e = rand(*shape, seed=21) + 0.5
    assert as_float(spectral.mean_singular_value(e)) == pytest.approx(np_mean_singular_value(e.numpy()), **TIGHT)


@pytest.mark.parametrize("shape", SHAPES)
def test_mean_singular_value_unnormalized(shape):
    e = rand(*shape, seed=22)
    expected = float(np.linalg.svd(e.numpy(), compute_uv=False).mean())
    assert as_float(spectral.mean_singular_value(e, normalize=False)) == pytest.approx(expected, **TIGHT)
    # on rows that already have unit norm both paths agree
    n = F.normalize(e, dim=1)
    assert as_float(spectral.mean_singular_value(n, normalize=False)) == pytest.approx(
        as_float(spectral.mean_singular_value(n)), **TIGHT
    )


@pytest.mark.parametrize("shape", SHAPES)
def test_mean_singular_value_ignores_row_scale(shape):
    e = rand(*shape, seed=23)
    scales = torch.rand(shape[0], 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 0.1
    assert as_float(spectral.mean_singular_value(e * scales)) == pytest.approx(
        as_float(spectral.mean_singular_value(e)), rel=1e-10
    )


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("form", ["score", "neg_mean", "exp"])
def test_svmax_loss_matches_numpy(shape, form):
    e = rand(*shape, seed=24) + 0.3
    assert as_float(svmax.svmax_loss(e, form)) == pytest.approx(np_svmax_loss(e.numpy(), form), **TIGHT)


@pytest.mark.parametrize("shape", SHAPES)
def test_svmax_score_matches_numpy(shape):
    e = rand(*shape, seed=25)
    lower, upper = np_bounds(*shape)
    expected = (np_mean_singular_value(e.numpy()) - lower) / (upper - lower)
    score = as_float(svmax.svmax_score(e))
    assert score == pytest.approx(expected, **TIGHT)
    assert 0.0 < score < 1.0


def test_svmax_default_form_is_score():
    e = rand(16, 8, seed=26)
    assert as_float(svmax.svmax_loss(e)) == as_float(svmax.svmax_loss(e, "score"))
    assert set(svmax.SVMAX_FORMS) == {"score", "neg_mean", "exp"}


# ------------------------------------------------------------------------------ bounds
@pytest.mark.parametrize(
    ("b", "d", "lower", "upper"),
    [
        (4, 8, 0.5, 1.0),  # b < d: k = b, L = sqrt(b)/b, U = 1
        (16, 64, 0.25, 1.0),
        (8, 4, math.sqrt(8) / 4, math.sqrt(2)),  # b > d: k = d
        (64, 16, 0.5, 2.0),
        (9, 9, 1 / 3, 1.0),  # b == d
        (1, 5, 1.0, 1.0),  # k = 1: a single singular value
        (5, 1, math.sqrt(5), math.sqrt(5)),
    ],
)
def test_svmax_bounds_values(b, d, lower, upper):
    got_lower, got_upper = svmax.svmax_bounds(b, d)
    assert got_lower == pytest.approx(lower, rel=1e-12)
    assert got_upper == pytest.approx(upper, rel=1e-12)
    assert (got_lower, got_upper) == pytest.approx(np_bounds(b, d), rel=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_random_embedding_lies_within_bounds(shape):
    lower, upper = svmax.svmax_bounds(*shape)
    assert lower < upper
    for seed in range(5):
        s_mu = as_float(spectral.mean_singular_value(rand(*shape, seed=seed)))
        assert lower < s_mu < upper


@pytest.mark.parametrize(("b", "d"), [(0, 3), (3, 0), (-1, 2)])
def test_svmax_bounds_reject_empty(b, d):
    with pytest.raises(ValueError, match="b >= 1 and d >= 1"):
        svmax.svmax_bounds(b, d)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("make", [rank_one_same_rows, rank_one_multiples])
def test_rank_one_hits_lower_bound(shape, make):
    e = make(*shape)
    lower, upper = svmax.svmax_bounds(*shape)
    assert as_float(spectral.mean_singular_value(e)) == pytest.approx(lower, rel=1e-9)
    assert as_float(svmax.svmax_score(e)) == pytest.approx(0.0, abs=1e-9)
    assert as_float(svmax.svmax_loss(e, "score")) == pytest.approx(1.0, abs=1e-9)
    assert as_float(svmax.svmax_loss(e, "neg_mean")) == pytest.approx(-lower, rel=1e-9)
    assert as_float(svmax.svmax_loss(e, "exp")) == pytest.approx(math.e, rel=1e-9)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("make", [flat_spectrum, identity_blocks])
@pytest.mark.parametrize("row_scale", [1.0, 3.5])
def test_flat_spectrum_hits_upper_bound(shape, make, row_scale):
    e = make(*shape) * row_scale
    lower, upper = svmax.svmax_bounds(*shape)
    s = torch.linalg.svdvals(F.normalize(e, dim=1))
    np.testing.assert_allclose(s.numpy(), np.full(min(shape), upper), rtol=1e-10)
    assert as_float(spectral.mean_singular_value(e)) == pytest.approx(upper, rel=1e-10)
    assert as_float(svmax.svmax_score(e)) == pytest.approx(1.0, abs=1e-9)
    assert as_float(svmax.svmax_loss(e, "score")) == pytest.approx(0.0, abs=1e-9)
    assert as_float(svmax.svmax_loss(e, "neg_mean")) == pytest.approx(-upper, rel=1e-10)
    assert as_float(svmax.svmax_loss(e, "exp")) == pytest.approx(1.0, rel=1e-9)


@pytest.mark.parametrize("k", [2, 5])
def test_svmax_score_undefined_for_single_singular_value(k):
    for shape in [(1, k), (k, 1)]:
        with pytest.raises(ValueError, match="undefined"):
            svmax.svmax_score(rand(*shape))




@pytest.mark.parametrize("shape", GRAD_SHAPES)
@pytest.mark.parametrize("normalize", [True, False])
def test_gradcheck_mean_singular_value(shape, normalize):
    e = (rand(*shape, seed=33) + 0.2).requires_grad_()
    s = torch.linalg.svdvals(e.detach())
    assert torch.all(s[:-1] - s[1:] > 1e-2) and s[-1] > 1e-2  # generic: distinct, nonzero
    assert torch.autograd.gradcheck(lambda x: spectral.mean_singular_value(x, normalize=normalize), (e,))


@pytest.mark.parametrize("shape", GRAD_SHAPES)
@pytest.mark.parametrize("form", svmax.SVMAX_FORMS)
def test_gradcheck_svmax_loss(shape, form):
    e = (rand(*shape, seed=34) + 0.2).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: svmax.svmax_loss(x, form), (e,))


@pytest.mark.parametrize("form", svmax.SVMAX_FORMS)
@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.ones(16, 8, dtype=torch.float64),
        lambda: torch.ones(16, 8, dtype=torch.float64) + 1e-8 * rand(16, 8, seed=35),
        lambda: torch.ones(16, 8) + 1e-6 * rand(16, 8, seed=36, dtype=torch.float32),
        lambda: rank_one_multiples(16, 8),
        lambda: torch.ones(4, 8, dtype=torch.float64),  # b < d
    ],
    ids=["ones", "ones+1e-8", "ones+1e-6-f32", "multiples", "ones-wide"],
)
def test_svmax_grad_finite_when_collapsed(form, make):
    e = make().requires_grad_()
    loss = svmax.svmax_loss(e, form)
    assert torch.isfinite(loss)
    loss.backward()
    assert e.grad is not None
    assert torch.isfinite(e.grad).all()


def test_svmax_descent_spreads_a_nearly_collapsed_embedding():
    e = (torch.ones(16, 8, dtype=torch.float64) + 1e-3 * rand(16, 8, seed=37)).requires_grad_()
    start = as_float(svmax.svmax_score(e))
    opt = torch.optim.SGD([e], lr=0.5)
    for _ in range(50):
        opt.zero_grad()
        svmax.svmax_loss(e).backward()
        opt.step()
    assert as_float(svmax.svmax_score(e)) > start + 0.1


def test_unknown_svmax_form_lists_valid_forms():
    with pytest.raises(ValueError, match="unknown SVMax loss form") as err:
        svmax.svmax_loss(torch.randn(8, 4), "hinge")  # type: ignore[arg-type]
    for form in svmax.SVMAX_FORMS:
        assert form in str(err.value)
    # the check a run makes before training (the registry of forms lives here, not in config.py)
    with pytest.raises(UnknownNameError, match="valid: score, neg_mean, exp"):
        svmax.check_svmax_form("hinge")
    assert svmax.check_svmax_form("exp") == "exp"


@pytest.mark.parametrize("shape", [(64, 256), (256, 64), (96, 96)])
def test_gram_mean_singular_value_matches_svd_in_float32(shape):
    """The Gram-eigenvalue path against torch.svd on float32 embeddings: value and gradient."""
    e = torch.randn(*shape, generator=torch.Generator().manual_seed(5))
    a, b = e.clone().requires_grad_(), e.clone().requires_grad_()
    ours = spectral.mean_singular_value(a)
    ref = torch.svd(F.normalize(b, dim=1))[1].mean()
    ours.backward()
    ref.backward()
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-3, atol=1e-6)


def test_float32_rank_one_gives_the_lower_bound_and_finite_gradients():
    e = rank_one_multiples(128, 512).float().requires_grad_()
    value = spectral.mean_singular_value(e)
    value.backward()
    assert value.item() == pytest.approx(svmax.svmax_bounds(128, 512)[0], rel=1e-5)
    assert torch.isfinite(e.grad).all() and e.grad.abs().max() > 0


@pytest.mark.parametrize("shape", [(256, 1024), (1024, 256)])
@pytest.mark.parametrize("ratio, path", [(0.5, "float32"), (0.04, "float32"), (0.02, "float64"), (1e-3, "float64")])
def test_precision_follows_the_conditioning(shape, ratio, path):
    """Within a factor ~32 between the largest and smallest singular value the float32 path is
    taken; beyond it float64. Either way value and gradient match a float64 SVD."""
    e = spectrum(*shape, ratio).requires_grad_()
    assert spectral.spectrum_precision(e) == path
    value = spectral.mean_singular_value(e, normalize=False)
    value.backward()
    ref_value, ref_grad = svd_reference(e.detach())
    assert value.item() == pytest.approx(ref_value, rel=1e-6)
    err = float((e.grad.double() - ref_grad).norm() / ref_grad.norm())
    assert err < (1e-4 if path == "float32" else 1e-6)


def test_precision_of_random_matrices():
    """Rectangular random embeddings are well conditioned (float32); a square one has singular
    values near 0, where a float32 Gram matrix would be off by percents: its Gram path would be
    float64, and the dispatch takes the SVD instead."""
    g = torch.Generator().manual_seed(0)
    assert spectral.spectrum_precision(F.normalize(torch.randn(128, 1024, generator=g), dim=1)) == "float32"
    square = F.normalize(torch.randn(256, 256, generator=g), dim=1)
    assert spectral.spectrum_precision(square) == "svd"
    assert spectral._float32_spectrum(square, True, False) is None  # the Gram path would need float64
    assert spectral.mean_singular_value(square).item() == pytest.approx(svd_reference(square)[0], rel=1e-6)


def test_near_collapse_keeps_its_gradient():
    """A nearly collapsed embedding (one direction plus 1e-3 noise) goes to float64 and keeps
    the small directions' gradient, which the float32 Gram matrix cannot resolve."""
    g = torch.Generator().manual_seed(1)
    e = torch.randn(1, 512, generator=g) + 1e-3 * torch.randn(64, 512, generator=g)
    e = F.normalize(e, dim=1).requires_grad_()
    assert spectral.spectrum_precision(e) == "float64"
    spectral.mean_singular_value(e, normalize=False).backward()
    ref_grad = svd_reference(e.detach())[1]
    assert float((e.grad.double() - ref_grad).norm() / ref_grad.norm()) < 1e-4


def test_float64_input_stays_float64():
    e = spectrum(64, 256, 0.5).double()
    assert spectral.spectrum_precision(e) == "float64"
    assert spectral.mean_singular_value(e, normalize=False).dtype == torch.float64


def test_value_without_gradient_equals_value_with_gradient():
    """Under no_grad only eigenvalues are computed; the value is the same."""
    for ratio in (0.5, 1e-3):
        e = spectrum(128, 512, ratio)
        with torch.no_grad():
            cheap = spectral.mean_singular_value(e, normalize=False)
        full = spectral.mean_singular_value(e.clone().requires_grad_(), normalize=False)
        assert cheap.item() == pytest.approx(full.item(), rel=1e-6)


# ------------------------------------------------------------- near-square shapes take the SVD
@pytest.mark.parametrize(("b", "d", "svd"), [(256, 256, True), (240, 256, True), (256, 240, True),
                                             (224, 256, False), (256, 2048, False), (4096, 2048, False)])
def test_dispatch_follows_the_aspect_ratio(b, d, svd):
    assert spectral.uses_svd(b, d) is svd
    assert spectral.uses_svd(b, d) == (min(b, d) / max(b, d) > spectral.SVD_MIN_ASPECT)


@pytest.mark.parametrize("shape", [(256, 256), (240, 256), (256, 240)])
@pytest.mark.parametrize("ratio", [0.5, 1e-3, None], ids=["conditioned", "ill-conditioned", "random"])
def test_svd_path_equals_torch_svd(shape, ratio):
    """Square shapes take the SVD: value and gradient are torch.svd's (float32). Against a
    float64 SVD the value meets test_precision_follows_the_conditioning's 1e-6 and the gradient
    its float32 bound 1e-4 (measured: ~3e-6, ~1e-5 when the spectrum spans 1e-3)."""
    if ratio is None:
        e = torch.randn(*shape, generator=torch.Generator().manual_seed(7))
    else:
        e = spectrum(*shape, ratio)
    assert spectral.spectrum_precision(F.normalize(e, dim=1)) == "svd"
    a, b = e.clone().requires_grad_(), e.clone().requires_grad_()
    ours = spectral.mean_singular_value(a)
    ref = torch.svd(F.normalize(b, dim=1))[1].mean()
    ours.backward()
    ref.backward()
    assert ours.dtype == torch.float32
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-7)
    # against float64: the polar factor of the normalized rows, chained through the normalization
    c = e.double().requires_grad_()
    exact = torch.linalg.svdvals(F.normalize(c, dim=1)).mean()
    exact.backward()
    assert ours.item() == pytest.approx(exact.item(), rel=1e-6)
    assert float((a.grad.double() - c.grad).norm() / c.grad.norm()) < 1e-4


def test_svd_path_rank_one_is_finite_and_at_the_lower_bound():
    e = rank_one_multiples(128, 128).float().requires_grad_()
    value = spectral.mean_singular_value(e)
    value.backward()
    assert value.item() == pytest.approx(svmax.svmax_bounds(128, 128)[0], rel=1e-4)
    assert torch.isfinite(e.grad).all()


def test_svd_path_keeps_float64():
    e = rand(32, 32, seed=41).requires_grad_()
    value = spectral.mean_singular_value(e)
    assert value.dtype == torch.float64
    assert value.item() == pytest.approx(np_mean_singular_value(e.detach().numpy()), **TIGHT)
    assert torch.autograd.gradcheck(spectral.mean_singular_value, (e,))


