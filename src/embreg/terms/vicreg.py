"""VICReg's three terms: invariance, variance and covariance (Bardes, Ponce, LeCun, "VICReg:
Variance-Invariance-Covariance Regularization for Self-Supervised Learning", ICLR 2022, Eq. 1-5,
and the official code, facebookresearch/vicreg ``main_vicreg.py``).

Every function takes one view's embedding ``z`` of shape (b, d) (batch, dimension) and returns
a scalar tensor; the variance term is computed as the official code does (halved over the two
views, unbiased variance, eps = 1e-4). Tested against an independent NumPy implementation and
the official forward in tests/terms/test_vicreg.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from embreg.terms import Param, term


def _check_2d(z: torch.Tensor, name: str = "z") -> None:
    if z.dim() != 2:
        raise ValueError(f"{name} must be a (batch, dim) matrix, got shape {tuple(z.shape)}")


def invariance(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """Mean squared error between two views, averaged over all b*d entries. (b, d) x2 -> ()"""
    _check_2d(z1, "z1")
    if z1.shape != z2.shape:
        raise ValueError(f"views differ in shape: {tuple(z1.shape)} vs {tuple(z2.shape)}")
    return F.mse_loss(z1, z2)


def sphere_invariance(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """mean_i ||n1_i - n2_i||^2 = 2 - 2 cos on the l2-normalized rows: the unit-sphere distance
    SVMax's embeddings live under (Taha et al. 2021 normalize rows before the SVD). (b, d) x2 -> ()"""
    n1, n2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    return (n1 - n2).pow(2).sum(dim=1).mean()


def std_per_dim(z: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """sqrt(unbiased Var_j + eps) for each dimension j. (b, d) -> (d,)"""
    _check_2d(z)
    if z.shape[0] < 2:
        raise ValueError(f"the variance term needs a batch of at least 2 samples, got {z.shape[0]}")
    return torch.sqrt(z.var(dim=0, unbiased=True) + eps)


def variance(z: torch.Tensor, gamma: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
    """VICReg's hinge on the per-dimension std: mean_j relu(gamma - std_j), v(Z) of the paper's
    Eq. 1 for one view. (b, d) -> ()"""
    return F.relu(gamma - std_per_dim(z, eps)).mean()


def variance_term(z1: torch.Tensor, z2: torch.Tensor, gamma: float = 1.0, eps: float = 1e-4,
                  halve: bool = True) -> torch.Tensor:
    """The variance term over both views: ``(v(z1) + v(z2)) / 2`` as the official code computes it
    (``halve=True``, the default), or ``v(z1) + v(z2)`` as the paper's Eq. 1 prints it."""
    total = variance(z1, gamma, eps) + variance(z2, gamma, eps)
    return total / 2 if halve else total


def covariance(z: torch.Tensor) -> torch.Tensor:
    """VICReg's decorrelation term: (1/d) * sum_{i != j} C_ij^2 with C = (Z - mean)^T (Z - mean) /
    (b - 1), the unbiased covariance (paper Eq. 3-4). (b, d) -> ()"""
    _check_2d(z)
    b, d = z.shape
    if b < 2:
        raise ValueError(f"the covariance term needs a batch of at least 2 samples, got {b}")
    zc = z - z.mean(dim=0)
    cov = (zc.T @ zc) / (b - 1)
    off_diag = cov.pow(2).sum() - cov.diagonal().pow(2).sum()
    return off_diag / d


def covariance_term(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """The covariance term over both views: c(z1) + c(z2)."""
    return covariance(z1) + covariance(z2)


@term("invariance", "VICReg's invariance: the views' embeddings agree (MSE; on the unit sphere in l2 space)",
      equation="raw: mean over b*d entries of (z1 - z2)^2; l2: mean_i ||n1_i - n2_i||^2 = 2 - 2 cos",
      monitor=True)
def _invariance(views) -> torch.Tensor:
    z1, z2 = views.z  # the rank's own rows: a per-sample loss needs no gathering
    return invariance(z1, z2) if views.space == "raw" else sphere_invariance(z1, z2)


@term("variance", "VICReg's variance hinge: every dimension's std at least gamma",
      equation="(v(z1) + v(z2)) / 2, v(z) = mean_j relu(gamma - sqrt(Var_j(z) + eps))",
      params={"gamma": Param(1.0, "target std (in l2 space the embedding is scaled by sqrt(d))", lo=0, lo_open=True),
              "eps": Param(1e-4, "added to the variance before the square root", lo=0, lo_open=True),
              "halve": Param(True, "halve the sum over the views, as the official code does (Eq. 1 does not)")},
      regularizer=True, monitor=True)
def _variance(views, gamma: float, eps: float, halve: bool) -> torch.Tensor:
    e1, e2 = views.embedded()
    return variance_term(e1, e2, gamma, eps, halve)


@term("covariance", "VICReg's decorrelation: off-diagonal covariances to 0",
      equation="c(z1) + c(z2), c(z) = (1/d) sum_{i != j} C_ij^2", regularizer=True, monitor=True)
def _covariance(views) -> torch.Tensor:
    e1, e2 = views.embedded()
    return covariance_term(e1, e2)
