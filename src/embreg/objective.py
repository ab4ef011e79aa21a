"""An arm's training objective: which terms, in which space, on which layers (and, for the
metric-learning arms, the contrastive loss with or without SVMax).

``ssl_loss`` returns every term's value on the final embedding (for the loss-term curves, also
the terms an arm does not train with, computed without gradient) and the weighted total.

Layers (ablation C). The all-layer arm is the last-layer arm plus the same regularizers on every
stage's pooled output: the final embedding keeps its full coefficients (on one batch the
gradient reaching it is the last-layer arm's), and each stage term is added on top, times
``objective.layer_weight``. This is weight decay's pattern, a penalty applied to every layer
(A. Taha's review "Feature Embedding Regularizers: SVMax & VICReg"), and VCReg's per-block
regularization (Zhu et al., 2023). Averaging over layers instead would hand the final embedding
1/(1 + n_stages) of its coefficient and so change two things at once.

Metric learning (the SVMax paper's retrieval setting): the contrastive loss of Hadsell, Chopra,
LeCun, "Dimensionality Reduction by Learning an Invariant Mapping", CVPR 2006.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from embreg import regularizers as R
from embreg.config import ObjectiveConfig
from embreg.distributed import gather_with_grad


def to_space(z: torch.Tensor, space: str) -> torch.Tensor:
    """raw: unchanged. l2: rows on the unit sphere, scaled by sqrt(d) so a spread-out
    embedding has per-dimension std about 1 (the variance target gamma = 1 then applies
    unchanged). (b, d) -> (b, d)"""
    if space == "raw":
        return z
    if space == "l2":
        return F.normalize(z, dim=1) * math.sqrt(z.shape[1])
    raise ValueError(f"unknown embedding space {space!r}; valid: raw, l2")


def view_invariance(z1: torch.Tensor, z2: torch.Tensor, space: str) -> torch.Tensor:
    """The arm's invariance loss in its space (``regularizers.invariance`` is VICReg's MSE).
    raw: that MSE. l2: mean_i ||n1_i - n2_i||^2 = 2 - 2 cos, the unit-sphere distance SVMax's
    embeddings live under (Taha et al. 2021 normalize rows before the SVD)."""
    if space == "raw":
        return R.invariance(z1, z2)
    to_space(z1, space)  # validates the name
    n1, n2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    return (n1 - n2).pow(2).sum(dim=1).mean()


def regularizer_terms(
    z1: torch.Tensor, z2: torch.Tensor, obj: ObjectiveConfig, monitor: bool = True
) -> dict[str, torch.Tensor]:
    """variance, covariance and SVMax (as ``1 - score`` etc.) on embeddings gathered across
    ranks; a term whose coefficient is 0 is computed without gradient, for logging only, and
    only when ``monitor`` (``pretrain.monitor_every``)."""
    g1, g2 = gather_with_grad(z1), gather_with_grad(z2)
    e1, e2 = to_space(g1, obj.space), to_space(g2, obj.space)
    out = {}
    specs = {
        "variance": lambda: R.variance_term(e1, e2, obj.gamma, obj.var_eps, obj.var_halve),
        "covariance": lambda: R.covariance_term(e1, e2),
        # both views in one eigensolver call: (2, b, d) -> (2,), their mean
        "svmax": lambda: R.svmax_loss(torch.stack([g1, g2]), obj.svmax_form).mean(),
    }
    for name, fn in specs.items():
        if getattr(obj, name) > 0:
            out[name] = fn()
        elif monitor:
            with torch.no_grad():
                out[name] = fn()
    return out


def stage_terms(
    taps1: dict[str, torch.Tensor], taps2: dict[str, torch.Tensor], obj: ObjectiveConfig, monitor: bool = True
) -> dict[str, torch.Tensor]:
    """Each regularizer summed over the stages' pooled outputs (taps: name -> (b, c)), unweighted.
    Without taps every sum is 0. A ``layer_weight`` of 0 keeps them out of the graph (logging only)."""
    if not taps1:
        zero = torch.zeros(())
        return {k: zero for k in ("variance", "covariance", "svmax") if monitor or getattr(obj, k) > 0}
    with torch.set_grad_enabled(torch.is_grad_enabled() and obj.layer_weight > 0):
        per_stage = [regularizer_terms(taps1[n], taps2[n], obj, monitor) for n in sorted(taps1)]
    return {k: torch.stack([t[k] for t in per_stage]).sum() for k in per_stage[0]}


def ssl_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    taps1: dict[str, torch.Tensor],
    taps2: dict[str, torch.Tensor],
    obj: ObjectiveConfig,
    monitor: bool = True,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted total and the logged terms (detached 0-d tensors on the embedding's device: reading
    them as numbers waits for the device, which the training loop does only every few steps).
    z: (b, d) projector outputs; taps: name -> (b, c).

    total = invariance * inv(z) + sum_t coeff_t * (t(z) + layer_weight * sum_stages t(tap)),
    the stage sum only with ``layers == "all"``. Invariance is always on the final embedding.
    Logged: each term on the final embedding (``variance``, ...), and for the all-layer arm
    the weighted stage sum (``variance_stages`` = layer_weight * sum over stages), so
    ``loss = invariance_coeff * invariance + sum_t coeff_t * (t + t_stages)``. Without ``monitor``
    the terms the arm does not train with are left out (not computed).
    """
    inv = view_invariance(z1, z2, obj.space)
    terms = regularizer_terms(z1, z2, obj, monitor)
    logged = {"invariance": inv.detach(), **{k: v.detach() for k, v in terms.items()}}
    total = obj.invariance * inv
    for name, value in terms.items():
        coeff = getattr(obj, name)
        if coeff > 0:
            total = total + coeff * value
    if obj.layers == "all":
        for name, value in stage_terms(taps1, taps2, obj, monitor).items():
            weighted = obj.layer_weight * value
            logged[f"{name}_stages"] = weighted.detach()
            coeff = getattr(obj, name)
            if coeff > 0 and obj.layer_weight > 0:
                total = total + coeff * weighted
    logged["loss"] = total.detach()
    return total, logged


def metric_loss(
    z: torch.Tensor, labels: torch.Tensor, obj: ObjectiveConfig, monitor: bool = True
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Supervised metric learning (``kind: metric``): the contrastive loss on the l2-normalized
    embedding, plus ``svmax`` times SVMax's loss on it, as in the SVMax paper's retrieval
    experiments. Both on the batch gathered across ranks. z: (b, d), labels: (b,).
    Logged (detached 0-d tensors): ``contrastive``, ``svmax`` (computed without gradient when its
    coefficient is 0, and then only when ``monitor``), ``loss``."""
    g, y = gather_with_grad(z), gather_with_grad(labels)
    con = contrastive(g, y, obj.margin)
    logged = {"contrastive": con.detach()}
    total = con
    if obj.svmax > 0 or monitor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and obj.svmax > 0):
            sv = R.svmax_loss(g, obj.svmax_form)
        logged["svmax"] = sv.detach()
        total = con + obj.svmax * sv if obj.svmax > 0 else con
    return total, {**logged, "loss": total.detach()}


def contrastive(e: torch.Tensor, labels: torch.Tensor, margin: float = 0.5) -> torch.Tensor:
    """Pairwise contrastive loss (Hadsell et al., 2006) on the l2-normalized rows of ``e``, over
    every pair i < j of the batch: a same-class pair costs d_ij^2, a pair of different classes
    max(0, margin - d_ij)^2, d the Euclidean distance between unit vectors (in [0, 2]). The two
    kinds are averaged separately and added, so that the batch's class balance does not weigh
    one against the other; a kind the batch has no pair of contributes 0. (b, d), (b,) -> ()"""
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
