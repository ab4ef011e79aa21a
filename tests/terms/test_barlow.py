"""Barlow Twins' loss against the official forward (facebookresearch/barlowtwins main.py, written
out here with torch's own BatchNorm1d as the reference), analytic cases, lambda's scaling with d,
gradients and the term through the objective."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from embreg.config import ObjectiveConfig
from embreg.objective import ssl_loss
from embreg.terms import barlow as B


def official_barlow(z1: torch.Tensor, z2: torch.Tensor, lambd: float) -> torch.Tensor:
    """The official BarlowTwins.forward after the projector, on one process: BatchNorm1d without
    affine in training mode, c = bn(z1).T @ bn(z2) / batch_size, on-diagonal (c_ii - 1)^2 plus
    lambd times the off-diagonal squares (its off_diagonal() helper's flatten/view trick)."""
    bn = nn.BatchNorm1d(z1.shape[1], affine=False).to(z1.dtype).train()
    c = bn(z1).T @ bn(z2)
    c.div_(z1.shape[0])
    on_diag = torch.diagonal(c).add(-1).pow(2).sum()
    n = c.shape[0]
    off = c.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()
    return on_diag + lambd * off.pow(2).sum()


def views(b: int, d: int, seed: int, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(b, d, generator=g, dtype=dtype) * 2 + 1
    return z1, 0.7 * z1 + 0.5 * torch.randn(b, d, generator=g, dtype=dtype)


@pytest.mark.parametrize(("b", "d"), [(8, 4), (16, 32), (64, 16), (256, 64)])
@pytest.mark.parametrize("lambd", [0.0051, 0.5])
def test_matches_the_official_forward(b, d, lambd):
    z1, z2 = views(b, d, seed=b + d)
    assert float(B.barlow_loss(z1, z2, lambd)) == pytest.approx(float(official_barlow(z1, z2, lambd)), rel=1e-10)


def test_float32_matches_the_official_forward():
    z1, z2 = views(128, 64, seed=1, dtype=torch.float32)
    got = B.barlow_loss(z1, z2, 0.0051)
    assert got.dtype == torch.float32
    assert float(got) == pytest.approx(float(official_barlow(z1, z2, 0.0051)), rel=1e-5)


def test_identical_decorrelated_views_give_zero():
    """Orthogonal centred columns with equal norms: C is the identity, the loss 0."""
    q, _ = torch.linalg.qr(torch.randn(64, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2)))
    z = q - q.mean(0)
    q2, _ = torch.linalg.qr(z)
    z = q2 * 8.0  # columns centred (the span of centred columns) and of equal norm
    c = B.cross_correlation(z, z)
    torch.testing.assert_close(c, torch.eye(8, dtype=torch.float64), atol=1e-4, rtol=0)
    assert float(B.barlow_loss(z, z, 1.0)) == pytest.approx(0.0, abs=1e-6)


def test_uncorrelated_views_cost_d_on_the_diagonal():
    """Independent views: C ~ 0, so the diagonal costs about d and the off-diagonal little."""
    g = torch.Generator().manual_seed(3)
    z1, z2 = torch.randn(4096, 16, generator=g, dtype=torch.float64), torch.randn(4096, 16, generator=g, dtype=torch.float64)
    assert float(B.barlow_loss(z1, z2, 0.0)) == pytest.approx(16.0, rel=0.02)


def test_lambda_scales_with_the_dimension():
    assert B.scaled_lambda(0.0051, 8192, 8192) == 0.0051
    assert B.scaled_lambda(0.0051, 8192, 1024) == pytest.approx(0.0408)
    assert B.scaled_lambda(0.0051, 0, 1024) == 0.0051


def test_gradcheck():
    z1, z2 = (t.requires_grad_() for t in views(6, 4, seed=5))
    assert torch.autograd.gradcheck(lambda a, b: B.barlow_loss(a, b, 0.3), (z1, z2))


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="at least 2"):
        B.cross_correlation(torch.randn(1, 4), torch.randn(1, 4))
    with pytest.raises(ValueError, match="one shape"):
        B.cross_correlation(torch.randn(8, 4), torch.randn(8, 5))


def test_the_arm_trains_barlow_alone_with_lambda_scaled_to_its_dimension():
    z1, z2 = views(32, 64, seed=6)
    obj = ObjectiveConfig(terms={"barlow": 1.0}, params={"barlow": {"lambd": 0.0051, "ref_dim": 8192}})
    total, logged = ssl_loss(z1, z2, {}, {}, obj)
    expected = official_barlow(z1, z2, 0.0051 * 8192 / 64)
    assert float(total) == pytest.approx(float(expected), rel=1e-10)
    assert logged["barlow"] == pytest.approx(float(expected), rel=1e-10)
    assert "invariance" in logged  # logged for the loss-term curves, not trained
