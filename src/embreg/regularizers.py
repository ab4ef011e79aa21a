"""The regularization terms: VICReg's invariance / variance / covariance and SVMax.

Every function takes one view's embedding ``z`` of shape (b, d) (batch, dimension) and
returns a scalar tensor. Definitions follow the papers below (the variance term as the official
code computes it: halved over the two views, unbiased variance, eps = 1e-4) and are tested
against an independent NumPy implementation and the official VICReg forward in
tests/test_regularizers.py.

References
----------
- VICReg: Bardes, Ponce, LeCun, "VICReg: Variance-Invariance-Covariance Regularization
  for Self-Supervised Learning", ICLR 2022 (Eq. 1-5), and the official code
  (facebookresearch/vicreg, ``main_vicreg.py``).
- SVMax: Taha, Hanson, Shrivastava, Davis, "SVMax: A Feature Embedding Regularizer",
  2021 (Sec. 3: mean singular value and its bounds).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

from embreg.registry import check_choice

SVMaxForm = Literal["score", "neg_mean", "exp"]
SVMAX_FORMS: tuple[str, ...] = ("score", "neg_mean", "exp")


def check_svmax_form(form: str) -> str:
    """``form`` if it is an SVMax loss form; else one line listing the valid ones."""
    return check_choice("SVMax loss form", form, SVMAX_FORMS)


def _check_2d(z: torch.Tensor, name: str = "z") -> None:
    if z.dim() != 2:
        raise ValueError(f"{name} must be a (batch, dim) matrix, got shape {tuple(z.shape)}")


def _check_matrices(z: torch.Tensor, name: str = "z") -> None:
    if z.dim() not in (2, 3):
        raise ValueError(f"{name} must be a (batch, dim) matrix or a stack of them, got shape {tuple(z.shape)}")


def invariance(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """Mean squared error between two views, averaged over all b*d entries. (b, d) x2 -> ()"""
    _check_2d(z1, "z1")
    if z1.shape != z2.shape:
        raise ValueError(f"views differ in shape: {tuple(z1.shape)} vs {tuple(z2.shape)}")
    return F.mse_loss(z1, z2)


def std_per_dim(z: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """sqrt(unbiased Var_j + eps) for each dimension j. (b, d) -> (d,)"""
    _check_2d(z)
    if z.shape[0] < 2:
        raise ValueError(
            f"the variance term needs a batch of at least 2 samples, got {z.shape[0]}"
        )
    return torch.sqrt(z.var(dim=0, unbiased=True) + eps)


def variance(z: torch.Tensor, gamma: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
    """VICReg's hinge on the per-dimension std: mean_j relu(gamma - std_j). (b, d) -> ()

    This is v(Z) of the paper's Eq. 1 for one view.
    """
    return F.relu(gamma - std_per_dim(z, eps)).mean()


def variance_term(
    z1: torch.Tensor,
    z2: torch.Tensor,
    gamma: float = 1.0,
    eps: float = 1e-4,
    halve: bool = True,
) -> torch.Tensor:
    """Variance term over both views.

    ``halve=True`` (default) is the official code: ``(v(z1) + v(z2)) / 2``.
    ``halve=False`` is the paper's Eq. 1 as printed: ``v(z1) + v(z2)``.
    """
    total = variance(z1, gamma, eps) + variance(z2, gamma, eps)
    return total / 2 if halve else total


def covariance(z: torch.Tensor) -> torch.Tensor:
    """VICReg's decorrelation term: (1/d) * sum_{i != j} C_ij^2. (b, d) -> ()

    C = (Z - mean)^T (Z - mean) / (b - 1), the unbiased covariance (paper Eq. 3-4).
    """
    _check_2d(z)
    b, d = z.shape
    if b < 2:
        raise ValueError(f"the covariance term needs a batch of at least 2 samples, got {b}")
    zc = z - z.mean(dim=0)
    cov = (zc.T @ zc) / (b - 1)
    off_diag = cov.pow(2).sum() - cov.diagonal().pow(2).sum()
    return off_diag / d


def covariance_term(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """Covariance term over both views: c(z1) + c(z2)."""
    return covariance(z1) + covariance(z2)


def svmax_bounds(b: int, d: int) -> tuple[float, float]:
    """Bounds on the mean singular value of a (b, d) matrix with unit-norm rows.

    With k = min(b, d) singular values whose squares sum to ||E||_F^2 = b:
    lower L = sqrt(b) / k (rank one: all rows equal, sigma_1 = sqrt(b), others 0),
    upper U = sqrt(b / k) (all k singular values equal). Valid for b < d and b >= d.
    """
    if b < 1 or d < 1:
        raise ValueError(f"need b >= 1 and d >= 1, got b={b}, d={d}")
    k = min(b, d)
    return math.sqrt(b) / k, math.sqrt(b / k)


# The float32 path is taken only for a well-conditioned Gram matrix: lambda_min >= this times
# lambda_max (singular values within a factor ~32 of each other). There its value agrees with a
# float64 SVD to ~1e-7 relative and its gradient to ~2e-5 (tests/test_regularizers.py); below
# it, float32 Gram entries cannot resolve the small singular values (a square random matrix
# is off by 4e-2, a near-collapsed one loses its gradient), so float64 is used.
FLOAT32_MIN_EIG_RATIO = 1e-3

# Above this aspect ratio min(b, d) / max(b, d) the Gram matrix is barely smaller than E, and its
# eigendecomposition (float64 whenever E is ill-conditioned, as a random square E is) costs as
# much as a float32 SVD of E itself or more: such shapes take the SVD. Measured forward+backward
# against torch.svd (one thread, CPU seconds, median of 2), the float64 Gram path being the
# binding case (a nearly collapsed E): x1.96 at 1024 x 2048, x1.38 at 1536 x 2048, x1.06 at
# 1792 x 2048 (random E there: float32, x2.37), x0.94 at 2048 x 2048; x1.08 at 4096 x 2048.
SVD_MIN_ASPECT = 0.9


def _gram(e: torch.Tensor, wide: bool) -> torch.Tensor:
    return e @ e.mT if wide else e.mT @ e


def _float32_spectrum(e32: torch.Tensor, wide: bool, vectors: bool):
    """(lam, vec) of the float32 Gram matrices (..., k, k), or None when one of them is too
    ill-conditioned for float32.

    On the CPU a Cholesky factorization of G - tau * max(diag G) * I is the cheap early-out: it
    fails whenever lambda_min < tau * lambda_max is certain (max(diag G) <= lambda_max), before
    any eigendecomposition is paid for. On a GPU reading its outcome would wait for the device
    once more, so the eigenvalues alone decide (one read for the whole stack).
    """
    g = _gram(e32, wide)
    if g.device.type == "cpu":
        eye = torch.eye(g.shape[-1], dtype=g.dtype, device=g.device)
        shifted = g - FLOAT32_MIN_EIG_RATIO * g.diagonal(dim1=-2, dim2=-1).amax(-1)[..., None, None] * eye
        if bool(torch.linalg.cholesky_ex(shifted).info.any()):
            return None
    lam, vec = torch.linalg.eigh(g) if vectors else (torch.linalg.eigvalsh(g), None)
    if not bool((lam[..., 0] >= FLOAT32_MIN_EIG_RATIO * lam[..., -1]).all()):
        return None
    return lam, vec


def uses_svd(b: int, d: int) -> bool:
    """Whether ``mean_singular_value`` takes the SVD for a (b, d) matrix (see ``SVD_MIN_ASPECT``)."""
    return min(b, d) / max(b, d) > SVD_MIN_ASPECT


def spectrum_precision(e: torch.Tensor) -> str:
    """Which path ``mean_singular_value`` takes for the (already normalized) (b, d) matrix ``e``:
    ``"svd"`` (near-square, in e's own dtype), else the Gram matrix's eigenvalues in
    ``"float32"`` (well-conditioned) or ``"float64"``."""
    if uses_svd(*e.shape[-2:]):
        return "svd"
    if e.dtype == torch.float64:
        return "float64"
    fast = _float32_spectrum(e.detach().float(), e.shape[-2] <= e.shape[-1], False)
    return "float32" if fast is not None else "float64"


class _MeanSingularValue(torch.autograd.Function):
    """Mean singular value from the eigenvalues of the smaller Gram matrix (k x k, k = min(b, d)):
    for b << d or d << b much cheaper than an SVD of the (b, d) matrix.

    Precision adapts to the spectrum. A well-conditioned Gram matrix (see
    ``FLOAT32_MIN_EIG_RATIO``: every singular value within a factor ~32 of the largest, the
    usual state of a healthy embedding) is decomposed in float32. Anything else (near
    collapse, or b ~ d where the smallest singular values approach 0) is recomputed in float64,
    whose Gram matrix resolves singular values down to ~1e-7 of the largest, as a float32 SVD
    does.

    Backward: d(sum_i s_i)/dE = U V^T (the polar factor), computed as U S^+ U^T E (b <= d) or
    E V S^+ V^T (b > d) from the same eigenvectors. On the float64 path, singular values at
    the float64 noise floor of the Gram matrix count as 0 in both directions (their
    subgradient is taken as 0), so a collapsed, rank-one embedding gets finite gradients and
    exactly the lower bound.

    Works on a stack of matrices (..., b, d) -> (...): one eigensolver call, and one precision
    for all of them (float64 when any one needs it).
    """

    @staticmethod
    def forward(ctx, e: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        b, d = e.shape[-2:]
        k, wide = min(b, d), b <= d
        vectors = bool(ctx.needs_input_grad[0])
        e32 = e.float()
        # float64 input asks for float64 throughout (e.g. gradcheck)
        fast = None if e.dtype == torch.float64 else _float32_spectrum(e32, wide, vectors)
        if fast is not None:
            lam, vec = fast
            s = lam.sqrt()
            value, work, inv = s.sum(-1) / k, e32, (1 / s if vectors else None)
        else:
            work = e.double()
            lam, vec = torch.linalg.eigh(_gram(work, wide)) if vectors else (torch.linalg.eigvalsh(_gram(work, wide)), None)
            s = lam.clamp_min(0).sqrt()
            floor = 10 * math.sqrt(k * torch.finfo(torch.float64).eps) * s.amax(-1, keepdim=True)
            keep = s > floor
            value = torch.where(keep, s, torch.zeros_like(s)).sum(-1) / k
            inv = torch.where(keep, 1 / s.clamp_min(torch.finfo(torch.float64).tiny), torch.zeros_like(s))
        if vectors:
            ctx.save_for_backward(work, vec, inv)
        ctx.wide, ctx.k = wide, k
        return value.to(e.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        work, vec, inv = ctx.saved_tensors
        proj = (vec * inv[..., None, :]) @ vec.mT  # U S^+ U^T (or V S^+ V^T)
        polar = proj @ work if ctx.wide else work @ proj
        return (grad.to(work.dtype)[..., None, None] * polar / ctx.k).to(grad.dtype)


def mean_singular_value(e: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """s_mu: mean of the k = min(b, d) singular values of the row-normalized matrix.

    (b, d) -> (), or a stack (n, b, d) -> (n,) in one eigensolver call (both views of a step).
    ``normalize=False`` skips the l2 normalization (rows already unit norm).
    Computed from the k x k Gram matrix's eigenvalues, in float32 when the spectrum is
    well-conditioned and in float64 otherwise (see ``_MeanSingularValue``): equal to
    ``torch.linalg.svdvals(e).mean()`` to float32 precision, several times faster for b << d
    (``make bench``), with finite gradients for a collapsed, rank-one embedding.

    Near-square shapes (``uses_svd``) take ``torch.linalg.svdvals`` of e instead, with its own
    backward (the polar factor U V^T / k, finite for any e). It runs in e's dtype: an SVD works
    on e, not on the Gram matrix, so it does not square the condition number, and in float32 it
    resolves singular values down to ~1e-7 of the largest as the float64 Gram path does: value
    to ~1e-7 relative of a float64 SVD, gradient to ~3e-6 (~1e-5 when the spectrum spans 1e-3;
    the float64 Gram path reaches 1e-6 there, at more than an SVD's cost), i.e. torch.svd's own.
    """
    _check_matrices(e, "e")
    if normalize:
        e = F.normalize(e, dim=-1)
    if uses_svd(*e.shape[-2:]):
        return torch.linalg.svdvals(e).mean(-1)
    return _MeanSingularValue.apply(e)


def svmax_score(e: torch.Tensor) -> torch.Tensor:
    """Normalized score (s_mu - L) / (U - L) in [0, 1]; 0 = rank one, 1 = flat spectrum.
    (b, d) -> (), or (n, b, d) -> (n,)."""
    b, d = e.shape[-2:]
    lower, upper = svmax_bounds(b, d)
    if upper == lower:  # k == 1: a single singular value, nothing to spread
        raise ValueError(f"the SVMax score is undefined for k = min(b, d) = 1 (b={b}, d={d})")
    return (mean_singular_value(e) - lower) / (upper - lower)


def svmax_loss(e: torch.Tensor, form: SVMaxForm = "score") -> torch.Tensor:
    """SVMax as a loss to minimize. (b, d) -> ()

    - ``score`` (default): ``1 - score``, in [0, 1] like the variance hinge.
    - ``neg_mean``: the paper's ``-s_mu``.
    - ``exp``: the official toy example's ``exp((U - s_mu) / (U - L))``, in [1, e].
    """
    if form == "score":
        return 1.0 - svmax_score(e)
    if form == "neg_mean":
        return -mean_singular_value(e)
    if form == "exp":
        b, d = e.shape[-2:]
        lower, upper = svmax_bounds(b, d)
        if upper == lower:
            raise ValueError(f"the SVMax exp form is undefined for k = min(b, d) = 1 (b={b}, d={d})")
        return torch.exp((upper - mean_singular_value(e)) / (upper - lower))
    raise ValueError(f"unknown SVMax loss form {form!r}; valid: {', '.join(SVMAX_FORMS)}")
