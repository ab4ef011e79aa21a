"""Collapse metrics of an embedding matrix E (n, d), as reported for every checkpoint."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from embreg.regularizers import svmax_bounds

DEAD_STD = 1e-2  # a dimension whose std is below this carries (almost) no information


def rankme(e: torch.Tensor, eps: float = 1e-7) -> float:
    """RankMe (Garrido et al., 2023, Eq. 1): exp of the entropy of the normalized singular
    values of the raw embedding. 1 for rank one, min(n, d) for a flat spectrum. (n, d) -> float"""
    s = torch.linalg.svdvals(e.double())
    p = s / (s.sum() + eps) + eps
    return float(torch.exp(-(p * p.log()).sum()))


def mean_abs_offdiag_corr(e: torch.Tensor) -> float:
    """Mean |corr(e_i, e_j)| over i != j; constant dimensions count as uncorrelated.
    Scale-free: no absolute epsilon, so tiny-but-varying dimensions are measured correctly."""
    e = e.double()
    ec = e - e.mean(0)
    std = ec.pow(2).mean(0).sqrt()
    # constant up to float64 rounding of the mean, relative to the data's own scale
    varying = std > 1e-12 * e.abs().max().clamp_min(1e-300)
    inv = torch.where(varying, 1.0 / std, torch.zeros_like(std))
    corr = (ec.T @ ec) / e.shape[0] * inv[:, None] * inv[None, :]
    d = e.shape[1]
    if d < 2:
        return 0.0
    off = corr.abs().sum() - corr.diagonal().abs().sum()
    return float(off / (d * (d - 1)))


def collapse_metrics(e: torch.Tensor) -> dict[str, float]:
    """s_mu (mean singular value of the l2-normalized rows) with its bounds and normalized
    score, RankMe, fraction of dimensions with std < 1e-2, mean |off-diagonal correlation|."""
    n, d = e.shape
    e = e.double()
    s = torch.linalg.svdvals(F.normalize(e, dim=1))
    lower, upper = svmax_bounds(n, d)
    s_mu = float(s.mean())
    return {
        "s_mu": s_mu,
        "s_mu_lower": lower,
        "s_mu_upper": upper,
        "s_mu_score": (s_mu - lower) / (upper - lower) if upper > lower else float("nan"),
        "rankme": rankme(e),
        "frac_dead_dims": float((e.std(0) < DEAD_STD).double().mean()),
        "mean_abs_corr": mean_abs_offdiag_corr(e),
        "dim": d,
    }


def spectrum(e: torch.Tensor, k: int) -> list[float]:
    """Leading k singular values of the l2-normalized rows, divided by the largest. (n, d)"""
    s = torch.linalg.svdvals(F.normalize(e.double(), dim=1))
    s = s / s[0].clamp_min(1e-12)
    return [float(v) for v in s[:k]]
