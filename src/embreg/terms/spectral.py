"""The mean singular value of a row-normalized embedding, fast and robust: SVMax's quantity
(Taha, Hanson, Shrivastava, Davis, "SVMax: A Feature Embedding Regularizer", 2021, Sec. 3).

``mean_singular_value`` computes it from the eigenvalues of the smaller Gram matrix (k x k, k =
min(b, d)): for b << d or d << b much cheaper than an SVD of the (b, d) matrix. Tested against
NumPy's SVD, gradcheck and near-collapse cases in tests/terms/test_svmax.py.

Eigensolvers fail on some ill-conditioned, low-rank input (cuSOLVER's syevj / syevd, pytorch#94772
and pytorch#105359), which is what a nearly collapsed embedding's Gram matrix is. A failure on
finite input is not a divergence: ``eigh`` retries in float64, then on the CPU, then by an SVD;
only a non-finite input is reported as one (``NonFiniteEmbeddingError``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# The float32 path (CPU) is taken only for a well-conditioned Gram matrix: lambda_min >= this
# times lambda_max (singular values within a factor ~32 of each other). There its value agrees
# with a float64 SVD to ~1e-7 relative and its gradient to ~2e-5 (tests/terms/test_svmax.py);
# below it, float32 Gram entries cannot resolve the small singular values (a square random matrix
# is off by 4e-2, a near-collapsed one loses its gradient), so float64 is used.
FLOAT32_MIN_EIG_RATIO = 1e-3

# Above this aspect ratio min(b, d) / max(b, d) the Gram matrix is barely smaller than E, and its
# eigendecomposition (float64 whenever E is ill-conditioned, as a random square E is) costs as
# much as a float32 SVD of E itself or more: such shapes take the SVD. Measured forward+backward
# against torch.svd (one thread, CPU seconds, median of 2), the float64 Gram path being the
# binding case (a nearly collapsed E): x1.96 at 1024 x 2048, x1.38 at 1536 x 2048, x1.06 at
# 1792 x 2048 (random E there: float32, x2.37), x0.94 at 2048 x 2048; x1.08 at 4096 x 2048.
SVD_MIN_ASPECT = 0.9


class NonFiniteEmbeddingError(torch.linalg.LinAlgError):
    """The eigensolver failed on an embedding holding NaN or infinity (a diverged run)."""


def _eigh(a: torch.Tensor, vectors: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    return torch.linalg.eigh(a) if vectors else (torch.linalg.eigvalsh(a), None)


def _svd_of_symmetric(a: torch.Tensor, vectors: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Eigenvalues (ascending) and eigenvectors of a symmetric positive semi-definite ``a`` from
    its SVD (another LAPACK routine, gesdd): there singular values are the eigenvalues and U holds
    the eigenvectors (a round-off negative eigenvalue comes back as its magnitude, below every
    floor this module applies)."""
    if not vectors:
        return torch.linalg.svdvals(a).flip(-1), None
    u, s, _ = torch.linalg.svd(a)
    return s.flip(-1), u.flip(-1)


def eigh(g: torch.Tensor, vectors: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Eigenvalues (ascending) and, with ``vectors``, eigenvectors of the symmetric positive
    semi-definite ``g`` (..., k, k). A solver failure on finite input is retried in float64, then
    on the CPU, then by an SVD of the same matrix on the CPU (on a CPU run the float64 solver
    would otherwise have no second chance), and the result returned in the dtype and on the
    device that were asked; a failure on non-finite input raises NonFiniteEmbeddingError.

    The retries are built only when needed: on success nothing is converted, copied or read back
    (a copy to the CPU made in advance would wait for the GPU at every call)."""
    attempts = [lambda: _eigh(g, vectors)]
    if g.dtype != torch.float64:
        attempts.append(lambda: _eigh(g.double(), vectors))
    if g.device.type != "cpu":
        attempts.append(lambda: _eigh(g.double().cpu(), vectors))
    attempts.append(lambda: _svd_of_symmetric(g.double().cpu(), vectors))
    for i, attempt in enumerate(attempts):
        try:
            lam, vec = attempt()
        except torch.linalg.LinAlgError as exc:
            if not bool(torch.isfinite(g).all()):
                raise NonFiniteEmbeddingError(f"the embedding is not finite ({exc})") from None
            if i == len(attempts) - 1:
                raise RuntimeError(f"the eigensolver failed on a finite {tuple(g.shape)} Gram matrix in "
                                   f"float32, float64, on the CPU and by an SVD: {exc}") from None
            continue
        back = (lambda t: t.to(g.device, g.dtype)) if i else (lambda t: t)
        return back(lam), (back(vec) if vec is not None else None)
    raise AssertionError("unreachable")


def _gram(e: torch.Tensor, wide: bool) -> torch.Tensor:
    return e @ e.mT if wide else e.mT @ e


def _float32_spectrum(e32: torch.Tensor, wide: bool, vectors: bool):
    """(lam, vec) of the float32 Gram matrices (..., k, k), or None when one of them is too
    ill-conditioned for float32 (CPU only: on a GPU the float64 path is always taken, so that no
    precision choice waits for the device). A Cholesky factorization of
    G - tau * max(diag G) * I is the cheap early-out: it fails whenever lambda_min < tau *
    lambda_max is certain (max(diag G) <= lambda_max), before any eigendecomposition is paid for."""
    g = _gram(e32, wide)
    eye = torch.eye(g.shape[-1], dtype=g.dtype, device=g.device)
    shifted = g - FLOAT32_MIN_EIG_RATIO * g.diagonal(dim1=-2, dim2=-1).amax(-1)[..., None, None] * eye
    if bool(torch.linalg.cholesky_ex(shifted).info.any()):
        return None
    lam, vec = eigh(g, vectors)
    if not bool((lam[..., 0] >= FLOAT32_MIN_EIG_RATIO * lam[..., -1]).all()):
        return None
    return lam, vec


def uses_svd(b: int, d: int) -> bool:
    """Whether ``mean_singular_value`` takes the SVD for a (b, d) matrix (see ``SVD_MIN_ASPECT``)."""
    return min(b, d) / max(b, d) > SVD_MIN_ASPECT


def spectrum_precision(e: torch.Tensor) -> str:
    """Which path ``mean_singular_value`` takes for the (already normalized) (b, d) matrix ``e``:
    ``"svd"`` (near-square, in e's own dtype), else the Gram matrix's eigenvalues in
    ``"float32"`` (CPU, well-conditioned) or ``"float64"`` (always on a GPU)."""
    if uses_svd(*e.shape[-2:]):
        return "svd"
    if e.dtype == torch.float64 or e.device.type != "cpu":
        return "float64"
    fast = _float32_spectrum(e.detach().float(), e.shape[-2] <= e.shape[-1], False)
    return "float32" if fast is not None else "float64"


class _MeanSingularValue(torch.autograd.Function):
    """Mean singular value from the eigenvalues of the smaller Gram matrix.

    Precision: on the CPU a well-conditioned Gram matrix (see ``FLOAT32_MIN_EIG_RATIO``: every
    singular value within a factor ~32 of the largest, the usual state of a healthy embedding) is
    decomposed in float32, anything else (near collapse, or b ~ d where the smallest singular
    values approach 0) in float64, whose Gram matrix resolves singular values down to ~1e-7 of the
    largest, as a float32 SVD does. On a GPU float64 always: choosing would read the spectrum back
    (a wait for the device every step), and a 256 x 256 float64 eigendecomposition is cheap.

    Backward: d(sum_i s_i)/dE = U V^T (the polar factor), computed as U S^+ U^T E (b <= d) or
    E V S^+ V^T (b > d) from the same eigenvectors. On the float64 path, singular values at the
    float64 noise floor of the Gram matrix count as 0 in both directions (their subgradient is
    taken as 0), so a collapsed, rank-one embedding gets finite gradients and exactly the lower
    bound.

    Works on a stack of matrices (..., b, d) -> (...): one eigensolver call, and one precision
    for all of them (float64 when any one needs it).
    """

    @staticmethod
    def forward(ctx, e: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        b, d = e.shape[-2:]
        k, wide = min(b, d), b <= d
        vectors = bool(ctx.needs_input_grad[0])
        e32 = e.float()
        # float64 input asks for float64 throughout (e.g. gradcheck); a GPU always takes it
        cpu32 = e.dtype != torch.float64 and e.device.type == "cpu"
        fast = _float32_spectrum(e32, wide, vectors) if cpu32 else None
        if fast is not None:
            lam, vec = fast
            s = lam.sqrt()
            value, work, inv = s.sum(-1) / k, e32, (1 / s if vectors else None)
        else:
            work = e.double()
            lam, vec = eigh(_gram(work, wide), vectors)
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


def check_matrices(e: torch.Tensor, name: str = "e") -> None:
    if e.dim() not in (2, 3):
        raise ValueError(f"{name} must be a (batch, dim) matrix or a stack of them, got shape {tuple(e.shape)}")


def mean_singular_value(e: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """s_mu: mean of the k = min(b, d) singular values of the row-normalized matrix.

    (b, d) -> (), or a stack (n, b, d) -> (n,) in one eigensolver call (both views of a step).
    ``normalize=False`` skips the l2 normalization (rows already unit norm). Computed from the
    k x k Gram matrix's eigenvalues (see ``_MeanSingularValue``): equal to
    ``torch.linalg.svdvals(e).mean()`` to float32 precision, several times faster for b << d
    (``make bench``), with finite gradients for a collapsed, rank-one embedding.

    Near-square shapes (``uses_svd``) take ``torch.linalg.svdvals`` of e instead, with its own
    backward (the polar factor U V^T / k, finite for any e). It runs in e's dtype: an SVD works
    on e, not on the Gram matrix, so it does not square the condition number, and in float32 it
    resolves singular values down to ~1e-7 of the largest as the float64 Gram path does: value
    to ~1e-7 relative of a float64 SVD, gradient to ~3e-6 (~1e-5 when the spectrum spans 1e-3;
    the float64 Gram path reaches 1e-6 there, at more than an SVD's cost), i.e. torch.svd's own.
    """
    check_matrices(e, "e")
    if normalize:
        e = F.normalize(e, dim=-1)
    if uses_svd(*e.shape[-2:]):
        try:
            return torch.linalg.svdvals(e).mean(-1)
        except torch.linalg.LinAlgError as exc:  # as in ``eigh``: only a non-finite input is a divergence
            if not bool(torch.isfinite(e).all()):
                raise NonFiniteEmbeddingError(f"the embedding is not finite ({exc})") from None
            raise
    return _MeanSingularValue.apply(e)
