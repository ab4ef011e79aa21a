"""Collapse metrics of an embedding matrix E (n, d), as reported for every checkpoint.

Every spectrum comes from one float64 eigendecomposition of the smaller Gram matrix (d x d
when n > d, else n x n) instead of an SVD of the (n, d) matrix: for the 10000 x 1024 test
embeddings that is a 1024 x 1024 ``eigvalsh`` after one matrix product. One decomposition of
the l2-normalized rows serves s_mu, its score and the spectrum plot; one of the raw embedding
serves RankMe (row normalization changes the singular values, so RankMe cannot share it).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from embreg.data import class_indices, class_split

DEAD_STD = 1e-2  # a dimension whose std is below this carries (almost) no information (raw; l2: std x sqrt(d))


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


def singular_values(e: torch.Tensor) -> torch.Tensor:
    """The min(n, d) singular values of e, descending, float64, as the square roots of the
    smaller Gram matrix's eigenvalues. (n, d) -> (min(n, d),)

    The float64 Gram matrix resolves singular values down to ~sqrt(max(n, d) * eps64) of the
    largest (~1e-6 for 10000 x 1024); those below 10 times that are rounding noise (a rank-one
    matrix would otherwise show k - 1 spurious values ~1e-8) and count as 0, as they are ~1e-16
    in an SVD. The sums and ratios reported here (s_mu, its score, RankMe, the spectrum) match
    ones computed from ``torch.linalg.svdvals`` to 1e-9 relative (tests/test_metrics.py).
    """
    e = e.double()
    n, d = e.shape
    gram = e.T @ e if n > d else e @ e.T
    s = torch.linalg.eigvalsh(gram).flip(0).clamp_min(0).sqrt()
    floor = 10 * math.sqrt(max(n, d) * torch.finfo(torch.float64).eps) * s[0]
    return torch.where(s > floor, s, torch.zeros_like(s))


def row_singular_values(e: torch.Tensor) -> torch.Tensor:
    """Singular values of the l2-normalized rows (SVMax's space), descending. (n, d) -> (min(n, d),)"""
    return singular_values(F.normalize(e.double(), dim=1))


def rankme(e: torch.Tensor, eps: float = 1e-7) -> float:
    """RankMe (Garrido et al., 2023, Eq. 1): exp of the entropy of the normalized singular
    values of the raw embedding. 1 for rank one, min(n, d) for a flat spectrum. (n, d) -> float"""
    s = singular_values(e)
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


def direction_std(e: torch.Tensor) -> torch.Tensor:
    """Per-dimension std of the l2-normalized rows, times sqrt(d): about 1 for directions spread
    over the sphere, 0 when every row points the same way, whatever the rows' lengths (a loss
    that ignores length, like SimSiam's cosine, can inflate raw std without spreading
    directions). (n, d) -> (d,)"""
    return F.normalize(e.double(), dim=1).std(0) * math.sqrt(e.shape[1])


def collapse_metrics(e: torch.Tensor, row_values: torch.Tensor | None = None) -> dict[str, float]:
    """Direction-based measures first, which a collapsed embedding cannot hide behind varied row
    lengths: s_mu (mean singular value of the l2-normalized rows) with its bounds and normalized
    score, RankMe, the normalized rows' per-dimension std (mean, times sqrt(d): ``std_l2``) and
    the fraction of their dimensions below 1e-2 (``frac_dead_dims_l2``), mean |off-diagonal
    correlation|; then the raw embedding's fraction of dimensions with std < 1e-2
    (``frac_dead_dims``, raw: lengths alone can keep it at 0).
    ``row_values``: ``row_singular_values(e)`` if already computed (shared with ``spectrum``)."""
    n, d = e.shape
    e = e.double()
    s = row_singular_values(e) if row_values is None else row_values
    lower, upper = svmax_bounds(n, d)
    s_mu = float(s.mean())
    std_l2 = direction_std(e)
    return {
        "s_mu": s_mu,
        "s_mu_lower": lower,
        "s_mu_upper": upper,
        "s_mu_score": (s_mu - lower) / (upper - lower) if upper > lower else float("nan"),
        "rankme": rankme(e),
        "std_l2": float(std_l2.mean()),
        "frac_dead_dims_l2": float((std_l2 < DEAD_STD).double().mean()),
        "mean_abs_corr": mean_abs_offdiag_corr(e),
        "frac_dead_dims": float((e.std(0) < DEAD_STD).double().mean()),
        "dim": d,
    }


def spectrum(e: torch.Tensor, k: int, row_values: torch.Tensor | None = None) -> list[float]:
    """Leading k singular values of the l2-normalized rows, divided by the largest. (n, d)
    ``row_values``: ``row_singular_values(e)`` if already computed (shared with collapse_metrics)."""
    s = row_singular_values(e) if row_values is None else row_values
    s = s / s[0].clamp_min(1e-12)
    return [float(v) for v in s[:k]]


def recall_at_k(e: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 2, 4, 8)) -> dict[str, float]:
    """Retrieval recall@k, as the metric-learning papers report it (CUB, CARS): each sample in turn
    is the query and every other sample the gallery, ranked by cosine similarity; a query scores
    when a sample of its class is among its k nearest. Percent. (n, d), (n,) -> {"recall_at_k": %}
    Needs at least two samples (a query and a gallery of one)."""
    if len(e) < 2:
        raise ValueError(f"recall@k needs at least two samples (a query and its gallery), got {len(e)}")
    labels = labels.to(e.device)
    n = F.normalize(e.double(), dim=1)
    sim = n @ n.T
    sim.fill_diagonal_(-math.inf)  # a query never retrieves itself
    top = sim.topk(min(max(ks), len(e) - 1), dim=1).indices
    hit = labels[top] == labels[:, None]
    return {f"recall_at_{k}": float(hit[:, :k].any(dim=1).double().mean() * 100) for k in ks}


def collapse_report(feats: dict[str, torch.Tensor], k: int) -> tuple[dict, dict]:
    """Collapse metrics and leading singular values for every embedding extracted on test; one
    Gram eigendecomposition of the normalized rows serves both (and one of the raw rows RankMe)."""
    metrics, spectra = {}, {}
    for name, e in feats.items():
        rows = row_singular_values(e)
        metrics[name] = collapse_metrics(e, rows)
        spectra[name] = spectrum(e, k, rows)
    return metrics, spectra


RECALL_KS = (1, 2, 4, 8)  # the metric-learning papers' recall@k


def retrieval(feats: dict[str, torch.Tensor], labels: torch.Tensor, num_classes: int) -> dict[str, float]:
    """Recall@k on the test images of the held-out classes (``class_split``'s second half, never
    seen by the metric-learning arms), for the embedding (projector) and the backbone features:
    ``recall_at_1`` ... and ``backbone_recall_at_1`` ...; for raw pixels, ``feats`` has "pixels"."""
    _, held = class_split(num_classes)
    idx = class_indices(labels, held)
    out: dict[str, float] = {}
    if len(idx) < 2:  # e.g. a class subset of a dataset: no held-out class has test images
        return out
    for name, prefix in (("projector", ""), ("pixels", ""), ("backbone", "backbone_")):
        if name in feats:
            out.update({prefix + k: v for k, v in recall_at_k(feats[name][idx], labels[idx], RECALL_KS).items()})
    return out
