"""Shared by the term tests: random inputs and the float64 NumPy reference of every term."""

from __future__ import annotations

import math

import numpy as np
import torch  # noqa
import torch.nn.functional as F

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


# ------------------------------------------------------------------------ analytic cases
def rank_one_same_rows(b: int, d: int) -> torch.Tensor:
    v = torch.arange(1, d + 1, dtype=torch.float64)
    return v.expand(b, d).clone()


def rank_one_multiples(b: int, d: int) -> torch.Tensor:
    v = torch.linspace(-1.0, 2.0, d, dtype=torch.float64) + 0.05
    coef = torch.linspace(-3.0, 4.0, b, dtype=torch.float64)
    coef = torch.where(coef.abs() < 0.1, torch.full_like(coef, 0.5), coef)  # no zero rows
    return coef[:, None] * v[None, :]


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


# --------------------------------------------------------------------------- gradients
def gen_pair(b: int, d: int, scale: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    return (
        rand(b, d, seed=31, scale=scale).requires_grad_(),
        rand(b, d, seed=32, scale=scale).requires_grad_(),
    )


GRAD_SHAPES = [(6, 4), (4, 6), (5, 5)]


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


