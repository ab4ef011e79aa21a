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
    z1: torch.Tensor, z2: torch.Tensor, obj: ObjectiveConfig
) -> dict[str, torch.Tensor]:
    """variance, covariance and SVMax (as ``1 - score`` etc.) on embeddings gathered across
    ranks; a term whose coefficient is 0 is computed without gradient, for logging only."""
    g1, g2 = gather_with_grad(z1), gather_with_grad(z2)
    e1, e2 = to_space(g1, obj.space), to_space(g2, obj.space)
    out = {}
    specs = {
        "variance": lambda: R.variance_term(e1, e2, obj.gamma, obj.var_eps, obj.var_halve),
        "covariance": lambda: R.covariance_term(e1, e2),
        "svmax": lambda: (R.svmax_loss(g1, obj.svmax_form) + R.svmax_loss(g2, obj.svmax_form)) / 2,
    }
    for name, fn in specs.items():
        if getattr(obj, name) > 0:
            out[name] = fn()
        else:
            with torch.no_grad():
                out[name] = fn()
    return out


def stage_terms(
    taps1: dict[str, torch.Tensor], taps2: dict[str, torch.Tensor], obj: ObjectiveConfig
) -> dict[str, torch.Tensor]:
    """Each regularizer summed over the stages' pooled outputs (taps: name -> (b, c)), unweighted.
    Without taps every sum is 0. A ``layer_weight`` of 0 keeps them out of the graph (logging only)."""
    if not taps1:
        zero = torch.zeros(())
        return {"variance": zero, "covariance": zero, "svmax": zero}
    with torch.set_grad_enabled(torch.is_grad_enabled() and obj.layer_weight > 0):
        per_stage = [regularizer_terms(taps1[n], taps2[n], obj) for n in sorted(taps1)]
    return {k: torch.stack([t[k] for t in per_stage]).sum() for k in per_stage[0]}


def ssl_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    taps1: dict[str, torch.Tensor],
    taps2: dict[str, torch.Tensor],
    obj: ObjectiveConfig,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted total and the logged terms. z: (b, d) projector outputs; taps: name -> (b, c).

    total = invariance * inv(z) + sum_t coeff_t * (t(z) + layer_weight * sum_stages t(tap)),
    the stage sum only with ``layers == "all"``. Invariance is always on the final embedding.
    Logged: each term on the final embedding (``variance``, ...), and for the all-layer arm
    the weighted stage sum (``variance_stages`` = layer_weight * sum over stages), so
    ``loss = invariance_coeff * invariance + sum_t coeff_t * (t + t_stages)``.
    """
    inv = view_invariance(z1, z2, obj.space)
    terms = regularizer_terms(z1, z2, obj)
    logged = {"invariance": inv.detach(), **{k: v.detach() for k, v in terms.items()}}
    total = obj.invariance * inv
    for name, value in terms.items():
        coeff = getattr(obj, name)
        if coeff > 0:
            total = total + coeff * value
    if obj.layers == "all":
        for name, value in stage_terms(taps1, taps2, obj).items():
            weighted = obj.layer_weight * value
            logged[f"{name}_stages"] = weighted.detach()
            coeff = getattr(obj, name)
            if coeff > 0 and obj.layer_weight > 0:
                total = total + coeff * weighted
    logged["loss"] = total.detach()
    return total, {k: float(v) for k, v in logged.items()}


def metric_loss(z: torch.Tensor, labels: torch.Tensor, obj: ObjectiveConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """Supervised metric learning (``kind: metric``): the contrastive loss on the l2-normalized
    embedding, plus ``svmax`` times SVMax's loss on it, as in the SVMax paper's retrieval
    experiments. Both on the batch gathered across ranks. z: (b, d), labels: (b,).
    Logged: ``contrastive``, ``svmax`` (computed without gradient when its coefficient is 0), ``loss``."""
    g, y = gather_with_grad(z), gather_with_grad(labels)
    con = R.contrastive(g, y, obj.margin)
    with torch.set_grad_enabled(torch.is_grad_enabled() and obj.svmax > 0):
        sv = R.svmax_loss(g, obj.svmax_form)
    total = con + obj.svmax * sv if obj.svmax > 0 else con
    return total, {"contrastive": float(con.detach()), "svmax": float(sv.detach()), "loss": float(total.detach())}
