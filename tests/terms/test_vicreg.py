"""VICReg's terms against an independent float64 NumPy implementation, the official VICReg
forward, analytic cases, gradients and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from embreg.terms import vicreg as R
from embreg.terms.spectral import mean_singular_value
from tests.reference import vicreg_loss
from tests.terms.helpers import (
    DECORRELATED,
    EPS,
    GRAD_SHAPES,
    SHAPES,
    TIGHT,
    TIGHT_NP,
    as_float,
    covariance_floor,
    decorrelated,
    gen_pair,
    np_covariance,
    np_invariance,
    np_variance,
    official_vicreg_forward,
    rand,
)


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


@pytest.mark.parametrize("fn", [R.variance, R.covariance, mean_singular_value])
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

def test_covariance_hadamard_columns():
    h = torch.tensor([[1.0]], dtype=torch.float64)
    for _ in range(3):
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    z = h[:, 1:]  # 8 x 7, centered, orthogonal
    # exact in any order: integer Gram entries, and every bracketing of 7 equal squares agrees
    assert as_float(R.covariance(z)) == 0.0
