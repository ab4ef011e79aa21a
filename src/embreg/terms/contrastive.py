"""The contrastive loss of Hadsell, Chopra, LeCun, "Dimensionality Reduction by Learning an
Invariant Mapping", CVPR 2006: the metric-learning arms' loss (the SVMax paper's retrieval
setting), on labelled single views."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from embreg.terms import Param, term


def contrastive(e: torch.Tensor, labels: torch.Tensor, margin: float = 0.5) -> torch.Tensor:
    """Pairwise contrastive loss on the l2-normalized rows of ``e``, over every pair i < j of the
    batch: a same-class pair costs d_ij^2, a pair of different classes max(0, margin - d_ij)^2, d
    the Euclidean distance between unit vectors (in [0, 2]). The two kinds are averaged
    separately and added, so that the batch's class balance does not weigh one against the
    other; a kind the batch has no pair of contributes 0. (b, d), (b,) -> ()"""
    if e.dim() != 2:
        raise ValueError(f"e must be a (batch, dim) matrix, got shape {tuple(e.shape)}")
    if labels.shape != (e.shape[0],):
        raise ValueError(f"labels must have shape ({e.shape[0]},), got {tuple(labels.shape)}")
    n = F.normalize(e, dim=1)
    # squared distance between unit vectors: 2 - 2 cos (clamped: rounding can dip below 0)
    d2 = (2 - 2 * n @ n.T).clamp_min(0)
    i, j = torch.triu_indices(len(e), len(e), offset=1, device=e.device)
    d2, same = d2[i, j], labels[i] == labels[j]
    zero = e.sum() * 0  # keeps the graph (and the dtype) when a kind has no pair
    pos = d2[same].mean() if same.any() else zero
    # sqrt's gradient is infinite at 0: a negative pair at distance 0 is pushed by its clamp
    d = d2[~same].clamp_min(1e-12).sqrt()
    neg = F.relu(margin - d).pow(2).mean() if (~same).any() else zero
    return pos + neg


@term("contrastive", "Contrastive loss (Hadsell et al. 2006) on labelled pairs of unit vectors",
      equation="mean over same-class pairs of d^2 + mean over other pairs of relu(margin - d)^2, "
               "d = ||n_i - n_j||",
      params={"margin": Param(0.5, "distance between unit vectors (in [0, 2]) pushed for", lo=0, hi=2, lo_open=True)},
      kinds=("metric",))
def _contrastive(views, margin: float) -> torch.Tensor:
    (z,) = views.gathered()
    return contrastive(z, views.gathered_labels(), margin)
