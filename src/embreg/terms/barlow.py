"""Barlow Twins' redundancy-reduction loss (Zbontar, Jing, Misra, LeCun, Deny, "Barlow Twins:
Self-Supervised Learning via Redundancy Reduction", ICML 2021, Eq. 1 and the official code,
facebookresearch/barlowtwins ``main.py``): the cross-correlation matrix of the two views'
batch-normalized embeddings pushed to the identity. VICReg's covariance term borrows its
off-diagonal half. Tested against the official forward in tests/terms/test_barlow.py.

lambda: the paper's 5.1e-3 is for d = 8192. The off-diagonal sum has d - 1 entries per
dimension, the diagonal one, so at another d the same lambda weighs decorrelation d / 8192 as
much; lambda is scaled by ``ref_dim / d`` to keep that weight (0.041 at d = 1024), as ``lambd *
ref_dim`` stays the paper's 41.8. ``ref_dim: 0`` uses ``lambd`` as given.
"""

from __future__ import annotations

import torch

from embreg.terms import Param, term


def batch_normalize(z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Each dimension to zero mean and unit variance over the batch, as ``nn.BatchNorm1d(d,
    affine=False)`` in training mode (biased variance, eps inside the root). (b, d) -> (b, d)"""
    return (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + eps)


def cross_correlation(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """C_ij = sum_b bn(z1)_bi bn(z2)_bj / b: the views' cross-correlation. (b, d) x2 -> (d, d)"""
    if z1.dim() != 2 or z1.shape != z2.shape:
        raise ValueError(f"views must be two (batch, dim) matrices of one shape, got {tuple(z1.shape)}, {tuple(z2.shape)}")
    if z1.shape[0] < 2:
        raise ValueError(f"Barlow Twins needs a batch of at least 2 samples, got {z1.shape[0]}")
    return batch_normalize(z1).T @ batch_normalize(z2) / z1.shape[0]


def barlow_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float) -> torch.Tensor:
    """sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2 (Eq. 1). (b, d) x2 -> ()"""
    c = cross_correlation(z1, z2)
    diag = torch.diagonal(c)
    return (diag - 1).pow(2).sum() + lambd * (c.pow(2).sum() - diag.pow(2).sum())


def scaled_lambda(lambd: float, ref_dim: int, d: int) -> float:
    """``lambd`` at dimension ``d`` (module docstring): ``lambd * ref_dim / d``, or as given."""
    return lambd * ref_dim / d if ref_dim else lambd


@term("barlow", "Barlow Twins: the views' cross-correlation pushed to the identity (its diagonal is its invariance)",
      equation="sum_i (1 - C_ii)^2 + lambda sum_{i != j} C_ij^2, C = bn(z1)^T bn(z2) / b, "
               "lambda = lambd * ref_dim / d",
      params={"lambd": Param(0.0051, "off-diagonal weight at d = ref_dim (the paper's at 8192)", lo=0),
              "ref_dim": Param(8192, "the dimension lambd is given for; 0: no scaling", lo=0)})
def _barlow(views, lambd: float, ref_dim: int) -> torch.Tensor:
    z1, z2 = views.gathered()  # batch statistics over the global batch, as the official SyncBatchNorm
    return barlow_loss(z1, z2, scaled_lambda(lambd, ref_dim, z1.shape[1]))
