"""The regularization terms against an independent float64 NumPy implementation, the official
VICReg forward, analytic cases, gradients and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from embreg import regularizers as R
from embreg.config import ObjectiveConfig
from embreg.registry import UnknownNameError
from tests.reference import vicreg_loss

SHAPES = [(8, 4), (4, 8), (32, 16), (16, 64), (64, 64)]
EPS = 1e-4
TIGHT = {"rel": 1e-10, "abs": 1e-12}  # pytest.approx
TIGHT_NP = {"rtol": 1e-10, "atol": 1e-12}  # np.testing


# ----------------------------------------------------------------------------- helpers
def rand(b: int, d: int, seed: int = 0, scale: float = 1.0, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(b, d, generator=g, dtype=torch.float64)).to(dtype)


def as_float(t: torch.Tensor) -> float:
    assert t.dim() == 0, f"expected a scalar, got shape {tuple(t.shape)}"
    return float(t.detach())


def orthogonal(n: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    return q * np.sign(np.diag(r))


# --------------------------------------------------------------- NumPy reference (float64)
def np_invariance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((a - b) ** 2))


def np_variance(z: np.ndarray, gamma: float = 1.0, eps: float = EPS) -> float:
    std = np.sqrt(np.var(z, axis=0, ddof=1) + eps)
    return float(np.mean(np.maximum(0.0, gamma - std)))


def np_covariance(z: np.ndarray) -> float:
    d = z.shape[1]
    c = np.cov(z, rowvar=False, ddof=1).reshape(d, d)
    off = c[~np.eye(d, dtype=bool)]
    return float(np.sum(off**2) / d)


def np_normalize_rows(e: np.ndarray) -> np.ndarray:
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def np_mean_singular_value(e: np.ndarray) -> float:
    s = np.linalg.svd(np_normalize_rows(e), compute_uv=False)
    assert s.shape == (min(e.shape),)
    return float(s.mean())


def np_bounds(b: int, d: int) -> tuple[float, float]:
    k = min(b, d)
    # rank one: sigma_1^2 = ||E||_F^2 = b, the rest 0 -> mean sqrt(b)/k
    lower = np.sqrt(b) / k
    # flat: k * sigma^2 = b
    upper = np.sqrt(b / k)
    return float(lower), float(upper)


def np_svmax_loss(e: np.ndarray, form: str) -> float:
    lower, upper = np_bounds(*e.shape)
    s_mu = np_mean_singular_value(e)
    return {
        "score": 1.0 - (s_mu - lower) / (upper - lower),
        "neg_mean": -s_mu,
        "exp": float(np.exp((upper - s_mu) / (upper - lower))),
    }[form]


def official_vicreg_forward(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """facebookresearch/vicreg main_vicreg.py VICReg.forward after the projector, one process."""
    batch_size, num_features = x.shape

    def off_diagonal(m: torch.Tensor) -> torch.Tensor:
        n, _ = m.shape
        return m.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()

    repr_loss = F.mse_loss(x, y)
    x = x - x.mean(dim=0)
    y = y - y.mean(dim=0)
    std_x = torch.sqrt(x.var(dim=0) + 0.0001)
    std_y = torch.sqrt(y.var(dim=0) + 0.0001)
    std_loss = torch.mean(F.relu(1 - std_x)) / 2 + torch.mean(F.relu(1 - std_y)) / 2
    cov_x = (x.T @ x) / (batch_size - 1)
    cov_y = (y.T @ y) / (batch_size - 1)
    cov_loss = off_diagonal(cov_x).pow(2).sum().div(num_features) + off_diagonal(cov_y).pow(2).sum().div(
        num_features
    )
    return 25.0 * repr_loss + 25.0 * std_loss + 1.0 * cov_loss


# ------------------------------------------------------------- against the NumPy reference
@pytest.mark.parametrize("shape", SHAPES)
def test_invariance_matches_numpy(shape):
    z1, z2 = rand(*shape, seed=1), rand(*shape, seed=2)
    got = as_float(R.invariance(z1, z2))
    assert got == pytest.approx(np_invariance(z1.numpy(), z2.numpy()), **TIGHT)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("scale", [0.3, 1.0, 3.0])
def test_variance_matches_numpy(shape, scale):
    z = rand(*shape, seed=3, scale=scale)
    assert as_float(R.variance(z)) == pytest.approx(np_variance(z.numpy()), **TIGHT)
    np.testing.assert_allclose(
        R.std_per_dim(z).numpy(), np.sqrt(np.var(z.numpy(), axis=0, ddof=1) + EPS), **TIGHT_NP
    )


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0])
def test_variance_gamma_matches_numpy(shape, gamma):
    z = rand(*shape, seed=4)
    assert as_float(R.variance(z, gamma=gamma)) == pytest.approx(np_variance(z.numpy(), gamma), **TIGHT)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("halve", [True, False])
def test_variance_term_halving(shape, halve):
    z1, z2 = rand(*shape, seed=5, scale=0.5), rand(*shape, seed=6, scale=0.7)
    total = np_variance(z1.numpy()) + np_variance(z2.numpy())
    expected = total / 2 if halve else total
    assert as_float(R.variance_term(z1, z2, halve=halve)) == pytest.approx(expected, **TIGHT)


def test_variance_term_default_is_halved():
    z1, z2 = rand(8, 4, seed=7, scale=0.5), rand(8, 4, seed=8, scale=0.5)
    assert as_float(R.variance_term(z1, z2)) == pytest.approx(
        as_float(R.variance_term(z1, z2, halve=False)) / 2, **TIGHT
    )


@pytest.mark.parametrize("shape", SHAPES)
def test_covariance_matches_numpy(shape):
    z = rand(*shape, seed=9) + torch.linspace(-1, 1, shape[1], dtype=torch.float64)  # nonzero means
    assert as_float(R.covariance(z)) == pytest.approx(np_covariance(z.numpy()), **TIGHT)


@pytest.mark.parametrize("shape", SHAPES)
def test_covariance_term_is_sum_over_views(shape):
    z1, z2 = rand(*shape, seed=10), rand(*shape, seed=11)
    expected = np_covariance(z1.numpy()) + np_covariance(z2.numpy())
    assert as_float(R.covariance_term(z1, z2)) == pytest.approx(expected, **TIGHT)


@pytest.mark.parametrize("shape", SHAPES)
def test_covariance_is_shift_invariant(shape):
    z = rand(*shape, seed=12)
    assert as_float(R.covariance(z + 5.0)) == pytest.approx(as_float(R.covariance(z)), rel=1e-9)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("scale", [0.2, 1.0])
def test_vicreg_loss_matches_numpy_weighted_sum(shape, scale):
    z1, z2 = rand(*shape, seed=13, scale=scale), rand(*shape, seed=14, scale=scale)
    a, b = z1.numpy(), z2.numpy()
    expected = (
        25 * np_invariance(a, b)
        + 25 * (np_variance(a) + np_variance(b)) / 2
        + 1 * (np_covariance(a) + np_covariance(b))
    )
    assert as_float(vicreg_loss(z1, z2)) == pytest.approx(expected, **TIGHT)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("scale", [0.2, 1.0, 2.0])
def test_vicreg_loss_matches_official_forward(shape, scale):
    z1, z2 = rand(*shape, seed=15, scale=scale), rand(*shape, seed=16, scale=scale)
    expected = as_float(official_vicreg_forward(z1, z2))
    assert as_float(vicreg_loss(z1, z2)) == pytest.approx(expected, **TIGHT)


def test_vicreg_loss_matches_official_forward_float32():
    z1, z2 = rand(32, 16, seed=17, dtype=torch.float32), rand(32, 16, seed=18, dtype=torch.float32)
    got = vicreg_loss(z1, z2)
    assert got.dtype == torch.float32
    assert as_float(got) == pytest.approx(as_float(official_vicreg_forward(z1, z2)), rel=1e-5)


@pytest.mark.parametrize("coeffs", [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (2.0, 3.0, 0.5)])
def test_vicreg_loss_coefficients(coeffs):
    sim, std, cov = coeffs
    z1, z2 = rand(16, 8, seed=19, scale=0.5), rand(16, 8, seed=20, scale=0.5)
    a, b = z1.numpy(), z2.numpy()
    expected = (
        sim * np_invariance(a, b)
        + std * (np_variance(a) + np_variance(b)) / 2
        + cov * (np_covariance(a) + np_covariance(b))
    )
    got = vicreg_loss(z1, z2, sim_coeff=sim, std_coeff=std, cov_coeff=cov)
    assert as_float(got) == pytest.approx(expected, **TIGHT)


@pytest.mark.parametrize("shape", SHAPES)
def test_mean_singular_value_matches_numpy(shape):
    e = rand(*shape, seed=21) + 0.5
    assert as_float(R.mean_singular_value(e)) == pytest.approx(np_mean_singular_value(e.numpy()), **TIGHT)


@pytest.mark.parametrize("shape", SHAPES)
def test_mean_singular_value_unnormalized(shape):
    e = rand(*shape, seed=22)
    expected = float(np.linalg.svd(e.numpy(), compute_uv=False).mean())
    assert as_float(R.mean_singular_value(e, normalize=False)) == pytest.approx(expected, **TIGHT)
    # on rows that already have unit norm both paths agree
    n = F.normalize(e, dim=1)
    assert as_float(R.mean_singular_value(n, normalize=False)) == pytest.approx(
        as_float(R.mean_singular_value(n)), **TIGHT
    )


@pytest.mark.parametrize("shape", SHAPES)
def test_mean_singular_value_ignores_row_scale(shape):
    e = rand(*shape, seed=23)
    scales = torch.rand(shape[0], 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 0.1
    assert as_float(R.mean_singular_value(e * scales)) == pytest.approx(
        as_float(R.mean_singular_value(e)), rel=1e-10
    )


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("form", ["score", "neg_mean", "exp"])
def test_svmax_loss_matches_numpy(shape, form):
    e = rand(*shape, seed=24) + 0.3
    assert as_float(R.svmax_loss(e, form)) == pytest.approx(np_svmax_loss(e.numpy(), form), **TIGHT)


@pytest.mark.parametrize("shape", SHAPES)
def test_svmax_score_matches_numpy(shape):
    e = rand(*shape, seed=25)
    lower, upper = np_bounds(*shape)
    expected = (np_mean_singular_value(e.numpy()) - lower) / (upper - lower)
    score = as_float(R.svmax_score(e))
    assert score == pytest.approx(expected, **TIGHT)
    assert 0.0 < score < 1.0


def test_svmax_default_form_is_score():
    e = rand(16, 8, seed=26)
    assert as_float(R.svmax_loss(e)) == as_float(R.svmax_loss(e, "score"))
    assert set(R.SVMAX_FORMS) == {"score", "neg_mean", "exp"}


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
    got_lower, got_upper = R.svmax_bounds(b, d)
    assert got_lower == pytest.approx(lower, rel=1e-12)
    assert got_upper == pytest.approx(upper, rel=1e-12)
    assert (got_lower, got_upper) == pytest.approx(np_bounds(b, d), rel=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_random_embedding_lies_within_bounds(shape):
    lower, upper = R.svmax_bounds(*shape)
    assert lower < upper
    for seed in range(5):
        s_mu = as_float(R.mean_singular_value(rand(*shape, seed=seed)))
        assert lower < s_mu < upper


@pytest.mark.parametrize(("b", "d"), [(0, 3), (3, 0), (-1, 2)])
def test_svmax_bounds_reject_empty(b, d):
    with pytest.raises(ValueError, match="b >= 1 and d >= 1"):
        R.svmax_bounds(b, d)


# ------------------------------------------------------------------------ analytic cases
def rank_one_same_rows(b: int, d: int) -> torch.Tensor:
    v = torch.arange(1, d + 1, dtype=torch.float64)
    return v.expand(b, d).clone()


def rank_one_multiples(b: int, d: int) -> torch.Tensor:
    v = torch.linspace(-1.0, 2.0, d, dtype=torch.float64) + 0.05
    coef = torch.linspace(-3.0, 4.0, b, dtype=torch.float64)
    coef = torch.where(coef.abs() < 0.1, torch.full_like(coef, 0.5), coef)  # no zero rows
    return coef[:, None] * v[None, :]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("make", [rank_one_same_rows, rank_one_multiples])
def test_rank_one_hits_lower_bound(shape, make):
    e = make(*shape)
    lower, upper = R.svmax_bounds(*shape)
    assert as_float(R.mean_singular_value(e)) == pytest.approx(lower, rel=1e-9)
    assert as_float(R.svmax_score(e)) == pytest.approx(0.0, abs=1e-9)
    assert as_float(R.svmax_loss(e, "score")) == pytest.approx(1.0, abs=1e-9)
    assert as_float(R.svmax_loss(e, "neg_mean")) == pytest.approx(-lower, rel=1e-9)
    assert as_float(R.svmax_loss(e, "exp")) == pytest.approx(math.e, rel=1e-9)


def flat_spectrum(b: int, d: int, seed: int = 0) -> torch.Tensor:
    """Unit-norm rows with all k = min(b, d) singular values equal.

    b <= d: b rows of a d x d orthogonal matrix. b >= d (b a multiple of d): b/d stacked
    d x d orthogonal matrices, so E^T E = (b/d) I.
    """
    if b <= d:
        rows = orthogonal(d, seed)[:b]
    else:
        assert b % d == 0
        rows = np.concatenate([orthogonal(d, seed + i) for i in range(b // d)])
    return torch.from_numpy(rows)


def identity_blocks(b: int, d: int) -> torch.Tensor:
    """[I_b | 0] when b <= d; stacked copies of I_d when b is a multiple of d."""
    if b <= d:
        return torch.eye(b, d, dtype=torch.float64)
    return torch.eye(d, dtype=torch.float64).repeat(b // d, 1)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("make", [flat_spectrum, identity_blocks])
@pytest.mark.parametrize("row_scale", [1.0, 3.5])
def test_flat_spectrum_hits_upper_bound(shape, make, row_scale):
    e = make(*shape) * row_scale
    lower, upper = R.svmax_bounds(*shape)
    s = torch.linalg.svdvals(F.normalize(e, dim=1))
    np.testing.assert_allclose(s.numpy(), np.full(min(shape), upper), rtol=1e-10)
    assert as_float(R.mean_singular_value(e)) == pytest.approx(upper, rel=1e-10)
    assert as_float(R.svmax_score(e)) == pytest.approx(1.0, abs=1e-9)
    assert as_float(R.svmax_loss(e, "score")) == pytest.approx(0.0, abs=1e-9)
    assert as_float(R.svmax_loss(e, "neg_mean")) == pytest.approx(-upper, rel=1e-10)
    assert as_float(R.svmax_loss(e, "exp")) == pytest.approx(1.0, rel=1e-9)


@pytest.mark.parametrize("k", [2, 5])
def test_svmax_score_undefined_for_single_singular_value(k):
    for shape in [(1, k), (k, 1)]:
        with pytest.raises(ValueError, match="undefined"):
            R.svmax_score(rand(*shape))


@pytest.mark.parametrize("shape", SHAPES)
def test_constant_dimension_std_is_sqrt_eps(shape):
    b, d = shape
    z = 3.0 * rand(b, d, seed=27)  # std well above 1: the hinge is inactive there
    z[:, 0] = 7.0
    std = R.std_per_dim(z)
    assert float(std[0]) == pytest.approx(math.sqrt(EPS), rel=1e-12)  # = 0.01
    hinge = F.relu(1.0 - std)
    assert float(hinge[0]) == pytest.approx(0.99, rel=1e-12)
    assert torch.all(hinge[1:] == 0)
    assert as_float(R.variance(z)) == pytest.approx(0.99 / d, rel=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_fully_collapsed_variance(shape):
    z = torch.full(shape, -2.0, dtype=torch.float64)
    assert as_float(R.variance(z)) == pytest.approx(0.99, rel=1e-12)
    assert as_float(R.variance_term(z, z, halve=True)) == pytest.approx(0.99, rel=1e-12)
    assert as_float(R.variance_term(z, z, halve=False)) == pytest.approx(1.98, rel=1e-12)
    assert as_float(R.covariance(z)) == 0.0


def test_variance_zero_when_all_stds_exceed_gamma():
    z = rand(64, 8, seed=28, scale=5.0).requires_grad_()
    loss = R.variance(z)
    assert as_float(loss) == 0.0
    loss.backward()
    assert torch.count_nonzero(z.grad) == 0


def decorrelated(b: int, d: int, seed: int = 0) -> torch.Tensor:
    """Centered columns that are mutually orthogonal, with distinct scales (needs b > d)."""
    a = np.random.default_rng(seed).standard_normal((b, d))
    q, _ = np.linalg.qr(a - a.mean(axis=0))  # columns span centered vectors: zero mean
    return torch.from_numpy(q * np.linspace(0.5, 4.0, d) + np.arange(d))  # shift: covariance ignores it


def covariance_floor(z: torch.Tensor) -> float:
    """The largest |covariance(z)| that is float64 rounding when the true value is 0."""
    c = np.cov(z.numpy(), rowvar=False)
    # covariance() is sum(C^2) - sum(diag(C)^2) (then / d): two sums of ~||C||_F^2 that cancel,
    # each off by a few eps * ||C||_F^2 in a BLAS/CPU/thread-dependent order (<= 3.3 eps over
    # random orders, 0.9 seen); 64 eps is a margin, yet <= 1.2e-5 of what a 1e-4 correlation gives
    return 64 * np.finfo(np.float64).eps * float((c**2).sum()) / z.shape[1]


DECORRELATED = [(8, 4), (32, 16), (65, 64), (100, 10)]


@pytest.mark.parametrize(("b", "d"), DECORRELATED)
def test_covariance_zero_for_decorrelated_columns(b, d):
    z = decorrelated(b, d)
    tol = covariance_floor(z)
    assert as_float(R.covariance(z)) == pytest.approx(0.0, abs=tol)
    assert as_float(R.covariance_term(z, z)) == pytest.approx(0.0, abs=2 * tol)


@pytest.mark.parametrize(("b", "d"), DECORRELATED)
def test_covariance_of_one_correlated_pair_is_not_zero(b, d):
    """The criterion above has power: correlating the two widest columns by t = 1e-4 (C_ab =
    t C_aa, every other off-diagonal still 0) gives 2 (t C_aa)^2 / d, far outside the floor."""
    t = 1e-4
    z = decorrelated(b, d)
    z[:, -1] += t * z[:, -2]
    c_aa = float(np.cov(z[:, -2].numpy()))
    expected = 2 * (t * c_aa) ** 2 / d
    got = as_float(R.covariance(z))
    assert got != pytest.approx(0.0, abs=covariance_floor(z))
    assert got > 1000 * covariance_floor(z)
    assert got == pytest.approx(expected, rel=1e-6)
    assert as_float(R.covariance_term(z, z)) != pytest.approx(0.0, abs=2 * covariance_floor(z))


def test_covariance_hadamard_columns():
    h = torch.tensor([[1.0]], dtype=torch.float64)
    for _ in range(3):
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    z = h[:, 1:]  # 8 x 7, centered, orthogonal
    # exact in any order: integer Gram entries, and every bracketing of 7 equal squares agrees
    assert as_float(R.covariance(z)) == 0.0


def test_covariance_two_identical_columns():
    # C = [[v, v], [v, v]]: off-diagonal sum of squares 2 v^2, divided by d = 2
    x = rand(10, 1, seed=29)
    z = torch.cat([x, x], dim=1)
    v = float(x.var())
    assert as_float(R.covariance(z)) == pytest.approx(v**2, rel=1e-12)


def test_invariance_zero_for_identical_views():
    z = rand(8, 4, seed=30)
    assert as_float(R.invariance(z, z.clone())) == 0.0
    assert as_float(R.invariance(z, z + 2.0)) == pytest.approx(4.0, rel=1e-12)


# --------------------------------------------------------------------------- gradients
def gen_pair(b: int, d: int, scale: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    return (
        rand(b, d, seed=31, scale=scale).requires_grad_(),
        rand(b, d, seed=32, scale=scale).requires_grad_(),
    )


GRAD_SHAPES = [(6, 4), (4, 6), (5, 5)]


@pytest.mark.parametrize("shape", GRAD_SHAPES)
def test_gradcheck_invariance(shape):
    assert torch.autograd.gradcheck(R.invariance, gen_pair(*shape))


@pytest.mark.parametrize("shape", GRAD_SHAPES)
@pytest.mark.parametrize("halve", [True, False])
def test_gradcheck_variance_term(shape, halve):
    z1, z2 = gen_pair(*shape, scale=0.4)  # std < 1: hinge active, away from the kink
    assert torch.autograd.gradcheck(lambda a, b: R.variance_term(a, b, halve=halve), (z1, z2))


@pytest.mark.parametrize("shape", GRAD_SHAPES)
def test_gradcheck_covariance_term(shape):
    assert torch.autograd.gradcheck(R.covariance_term, gen_pair(*shape))


@pytest.mark.parametrize("shape", GRAD_SHAPES)
def test_gradcheck_vicreg_loss(shape):
    assert torch.autograd.gradcheck(vicreg_loss, gen_pair(*shape))


@pytest.mark.parametrize("shape", GRAD_SHAPES)
@pytest.mark.parametrize("normalize", [True, False])
def test_gradcheck_mean_singular_value(shape, normalize):
    e = (rand(*shape, seed=33) + 0.2).requires_grad_()
    s = torch.linalg.svdvals(e.detach())
    assert torch.all(s[:-1] - s[1:] > 1e-2) and s[-1] > 1e-2  # generic: distinct, nonzero
    assert torch.autograd.gradcheck(lambda x: R.mean_singular_value(x, normalize=normalize), (e,))


@pytest.mark.parametrize("shape", GRAD_SHAPES)
@pytest.mark.parametrize("form", R.SVMAX_FORMS)
def test_gradcheck_svmax_loss(shape, form):
    e = (rand(*shape, seed=34) + 0.2).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: R.svmax_loss(x, form), (e,))


@pytest.mark.parametrize("form", R.SVMAX_FORMS)
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
    loss = R.svmax_loss(e, form)
    assert torch.isfinite(loss)
    loss.backward()
    assert e.grad is not None
    assert torch.isfinite(e.grad).all()


def test_svmax_descent_spreads_a_nearly_collapsed_embedding():
    e = (torch.ones(16, 8, dtype=torch.float64) + 1e-3 * rand(16, 8, seed=37)).requires_grad_()
    start = as_float(R.svmax_score(e))
    opt = torch.optim.SGD([e], lr=0.5)
    for _ in range(50):
        opt.zero_grad()
        R.svmax_loss(e).backward()
        opt.step()
    assert as_float(R.svmax_score(e)) > start + 0.1


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "fn",
    [
        R.variance,
        R.std_per_dim,
        R.covariance,
        lambda z: R.variance_term(z, z),
        lambda z: R.covariance_term(z, z),
    ],
    ids=["variance", "std_per_dim", "covariance", "variance_term", "covariance_term"],
)
def test_batch_of_one_rejected(fn):
    with pytest.raises(ValueError, match="batch of at least 2"):
        fn(torch.randn(1, 8))


@pytest.mark.parametrize("fn", [R.variance, R.covariance, R.mean_singular_value])
def test_non_matrix_rejected(fn):
    with pytest.raises(ValueError, match=r"\(batch, dim\) matrix"):
        fn(torch.randn(8))


def test_invariance_shape_mismatch_rejected():
    with pytest.raises(ValueError, match="differ in shape"):
        R.invariance(torch.randn(8, 4), torch.randn(8, 5))


@pytest.mark.parametrize("key", ["sim_coeff", "std_coeff", "cov_coeff"])
def test_vicreg_negative_coefficient_rejected(key):
    z = torch.randn(8, 4)
    with pytest.raises(ValueError, match=f"{key} must be >= 0"):
        vicreg_loss(z, z, **{key: -1.0})


def test_unknown_svmax_form_lists_valid_forms():
    with pytest.raises(ValueError, match="unknown SVMax loss form") as err:
        R.svmax_loss(torch.randn(8, 4), "hinge")  # type: ignore[arg-type]
    for form in R.SVMAX_FORMS:
        assert form in str(err.value)
    # the check a run makes before training (the registry of forms lives here, not in config.py)
    with pytest.raises(UnknownNameError, match="valid: score, neg_mean, exp"):
        R.check_svmax_form("hinge")
    assert R.check_svmax_form("exp") == "exp"


# ------------------------------------------------------------------- objective config
@pytest.mark.parametrize("key", ["invariance", "variance", "covariance", "svmax"])
def test_objective_config_negative_coefficient(key):
    with pytest.raises(ValueError, match=f"objective.{key}"):
        ObjectiveConfig(**{key: -1.0}).validate()


def test_objective_config_variance_minus_one():
    with pytest.raises(ValueError, match="variance") as err:
        ObjectiveConfig(variance=-1).validate()
    assert "-1" in str(err.value)


def test_objective_config_defaults_are_valid():
    ObjectiveConfig().validate()
    ObjectiveConfig(space="l2", layers="all", svmax=1.0, svmax_form="exp").validate()


@pytest.mark.parametrize(
    ("field", "value", "valid"),
    [
        ("space", "sphere", ("raw", "l2")),
        ("layers", "middle", ("last", "all")),
        ("kind", "byol", ("ssl", "supervised", "untrained")),
    ],
)
def test_objective_config_unknown_choice_lists_valid(field, value, valid):
    with pytest.raises(UnknownNameError) as err:
        ObjectiveConfig(**{field: value}).validate()
    msg = str(err.value)
    assert repr(value) in msg
    for name in valid:
        assert name in msg
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize("shape", [(64, 256), (256, 64), (96, 96)])
def test_gram_mean_singular_value_matches_svd_in_float32(shape):
    """The Gram-eigenvalue path against torch.svd on float32 embeddings: value and gradient."""
    e = torch.randn(*shape, generator=torch.Generator().manual_seed(5))
    a, b = e.clone().requires_grad_(), e.clone().requires_grad_()
    ours = R.mean_singular_value(a)
    ref = torch.svd(F.normalize(b, dim=1))[1].mean()
    ours.backward()
    ref.backward()
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-3, atol=1e-6)


def test_float32_rank_one_gives_the_lower_bound_and_finite_gradients():
    e = rank_one_multiples(128, 512).float().requires_grad_()
    value = R.mean_singular_value(e)
    value.backward()
    assert value.item() == pytest.approx(R.svmax_bounds(128, 512)[0], rel=1e-5)
    assert torch.isfinite(e.grad).all() and e.grad.abs().max() > 0


def spectrum(b: int, d: int, ratio: float, seed: int = 0) -> torch.Tensor:
    """A float32 (b, d) matrix with unit rows whose singular values fall log-evenly from 1 to
    about ``ratio`` (before the row normalization, which moves them slightly)."""
    g = torch.Generator().manual_seed(seed)
    k = min(b, d)
    u, _ = torch.linalg.qr(torch.randn(b, k, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=torch.float64))
    s = torch.logspace(0, math.log10(ratio), k, dtype=torch.float64)
    return F.normalize((u * s) @ v.T, dim=1).float()


def svd_reference(e: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Mean singular value and its gradient (the polar factor / k) from a float64 SVD."""
    u, s, vh = torch.linalg.svd(e.double(), full_matrices=False)
    k = min(e.shape)
    return float(s.sum() / k), (u @ vh) / k


@pytest.mark.parametrize("shape", [(256, 1024), (1024, 256)])
@pytest.mark.parametrize("ratio, path", [(0.5, "float32"), (0.04, "float32"), (0.02, "float64"), (1e-3, "float64")])
def test_precision_follows_the_conditioning(shape, ratio, path):
    """Within a factor ~32 between the largest and smallest singular value the float32 path is
    taken; beyond it float64. Either way value and gradient match a float64 SVD."""
    e = spectrum(*shape, ratio).requires_grad_()
    assert R.spectrum_precision(e) == path
    value = R.mean_singular_value(e, normalize=False)
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
    assert R.spectrum_precision(F.normalize(torch.randn(128, 1024, generator=g), dim=1)) == "float32"
    square = F.normalize(torch.randn(256, 256, generator=g), dim=1)
    assert R.spectrum_precision(square) == "svd"
    assert R._float32_spectrum(square, True, False) is None  # the Gram path would need float64
    assert R.mean_singular_value(square).item() == pytest.approx(svd_reference(square)[0], rel=1e-6)


def test_near_collapse_keeps_its_gradient():
    """A nearly collapsed embedding (one direction plus 1e-3 noise) goes to float64 and keeps
    the small directions' gradient, which the float32 Gram matrix cannot resolve."""
    g = torch.Generator().manual_seed(1)
    e = torch.randn(1, 512, generator=g) + 1e-3 * torch.randn(64, 512, generator=g)
    e = F.normalize(e, dim=1).requires_grad_()
    assert R.spectrum_precision(e) == "float64"
    R.mean_singular_value(e, normalize=False).backward()
    ref_grad = svd_reference(e.detach())[1]
    assert float((e.grad.double() - ref_grad).norm() / ref_grad.norm()) < 1e-4


def test_float64_input_stays_float64():
    e = spectrum(64, 256, 0.5).double()
    assert R.spectrum_precision(e) == "float64"
    assert R.mean_singular_value(e, normalize=False).dtype == torch.float64


def test_value_without_gradient_equals_value_with_gradient():
    """Under no_grad only eigenvalues are computed; the value is the same."""
    for ratio in (0.5, 1e-3):
        e = spectrum(128, 512, ratio)
        with torch.no_grad():
            cheap = R.mean_singular_value(e, normalize=False)
        full = R.mean_singular_value(e.clone().requires_grad_(), normalize=False)
        assert cheap.item() == pytest.approx(full.item(), rel=1e-6)


# ------------------------------------------------------------- near-square shapes take the SVD
@pytest.mark.parametrize(("b", "d", "svd"), [(256, 256, True), (240, 256, True), (256, 240, True),
                                             (224, 256, False), (256, 2048, False), (4096, 2048, False)])
def test_dispatch_follows_the_aspect_ratio(b, d, svd):
    assert R.uses_svd(b, d) is svd
    assert R.uses_svd(b, d) == (min(b, d) / max(b, d) > R.SVD_MIN_ASPECT)


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
    assert R.spectrum_precision(F.normalize(e, dim=1)) == "svd"
    a, b = e.clone().requires_grad_(), e.clone().requires_grad_()
    ours = R.mean_singular_value(a)
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
    value = R.mean_singular_value(e)
    value.backward()
    assert value.item() == pytest.approx(R.svmax_bounds(128, 128)[0], rel=1e-4)
    assert torch.isfinite(e.grad).all()


def test_svd_path_keeps_float64():
    e = rand(32, 32, seed=41).requires_grad_()
    value = R.mean_singular_value(e)
    assert value.dtype == torch.float64
    assert value.item() == pytest.approx(np_mean_singular_value(e.detach().numpy()), **TIGHT)
    assert torch.autograd.gradcheck(R.mean_singular_value, (e,))
