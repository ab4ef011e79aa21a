"""An arm's training objective: the weighted sum of the loss terms it trains with (embreg.terms),
in its embedding space, on the final embedding and, for the all-layer arms, on every stage.

``objective_loss`` returns the weighted total and every computed term's value: the trained terms
and, for the loss-term curves, the terms the arm does not train with that are logged anyway
(``Term.monitor``), computed without gradient.

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
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from embreg import terms as T
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


@dataclass
class Views:
    """What a term sees of one batch: the projector outputs of its views (two for the
    self-supervised arms, one labelled view for the metric-learning arms), each (b, d) float32
    on this rank's rows, the arm's space, the labels, and the outputs of the terms' heads.

    ``gathered()`` and ``embedded()`` are computed once and shared by the terms that ask: the
    batch gathered across ranks (the identity on one process), and that in the arm's space."""

    z: tuple[torch.Tensor, ...]
    space: str = "raw"
    labels: torch.Tensor | None = None
    heads: dict[str, tuple[torch.Tensor, ...]] = field(default_factory=dict)  # term -> its head per view
    _grad: bool = field(default_factory=torch.is_grad_enabled)  # the graph the shared tensors belong to
    _cache: dict[str, tuple[torch.Tensor, ...]] = field(default_factory=dict)

    def _shared(self, key: str, make) -> tuple[torch.Tensor, ...]:
        if key not in self._cache:
            with torch.set_grad_enabled(self._grad):  # a logged-only term may ask first, under no_grad
                self._cache[key] = tuple(make())
        return self._cache[key]

    def gathered(self) -> tuple[torch.Tensor, ...]:
        """Each view gathered across ranks: (b * world, d) each, differentiable."""
        return self._shared("gathered", lambda: (gather_with_grad(z) for z in self.z))

    def embedded(self) -> tuple[torch.Tensor, ...]:
        """The gathered views in the arm's space (``to_space``)."""
        return self._shared("embedded", lambda: (to_space(g, self.space) for g in self.gathered()))

    def gathered_labels(self) -> torch.Tensor:
        if self.labels is None:
            raise ValueError("this term needs labels: it fits the metric-learning arms only (objective.kind: metric)")
        return self._shared("labels", lambda: (gather_with_grad(self.labels),))[0]


def computed_terms(obj: ObjectiveConfig, monitor: bool = True, regularizers_only: bool = False) -> list[str]:
    """The terms an arm computes, in the fixed order they are summed in: the ones it trains
    with, and with ``monitor`` the logged-only ones that fit its kind and need no head."""
    trained = obj.trained()
    names = []
    for name in T.names():
        t = T.get(name)
        if regularizers_only and not t.regularizer:
            continue
        if name in trained or (monitor and t.monitor and obj.kind in t.kinds and t.head is None):
            names.append(name)
    return names


def term_values(views: Views, obj: ObjectiveConfig, names: list[str]) -> dict[str, torch.Tensor]:
    """Each named term on ``views``; one the arm does not train with is computed without gradient."""
    out = {}
    for name in names:
        t = T.get(name)
        params = t.resolved(obj.params.get(name))
        if obj.terms.get(name, 0) > 0:
            out[name] = t.fn(views, **params)
        else:
            with torch.no_grad():
                out[name] = t.fn(views, **params)
    return out


def stage_terms(
    taps1: dict[str, torch.Tensor], taps2: dict[str, torch.Tensor], obj: ObjectiveConfig, monitor: bool = True
) -> dict[str, torch.Tensor]:
    """Each regularizer summed over the stages' pooled outputs (taps: name -> (b, c)), unweighted.
    Without taps every sum is 0. A ``layer_weight`` of 0 keeps them out of the graph (logging only)."""
    names = computed_terms(obj, monitor, regularizers_only=True)
    if not taps1:
        zero = torch.zeros(())
        return {k: zero for k in names}
    with torch.set_grad_enabled(torch.is_grad_enabled() and obj.layer_weight > 0):
        per_stage = [term_values(Views((taps1[n], taps2[n]), obj.space), obj, names) for n in sorted(taps1)]
    return {k: torch.stack([t[k] for t in per_stage]).sum() for k in names}


def objective_loss(
    views: Views, obj: ObjectiveConfig, monitor: bool = True,
    taps: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted total and the logged terms (detached 0-d tensors on the embedding's device: reading
    them as numbers waits for the device, which the training loop does only every few steps).

    total = sum_t coeff_t * (t(z) + layer_weight * sum_stages t(tap)), over the terms the arm
    trains with, the stage sum only for regularizers with ``layers == "all"``. Logged: each
    computed term on the final embedding (``variance``, ...), for the all-layer arm the weighted
    stage sum (``variance_stages`` = layer_weight * sum over stages), and ``loss``. Without
    ``monitor`` the terms the arm does not train with are left out (not computed).
    """
    values = term_values(views, obj, computed_terms(obj, monitor))
    logged = {k: v.detach() for k, v in values.items()}
    total = None
    for name, value in values.items():
        coeff = obj.terms.get(name, 0)
        if coeff > 0:
            total = coeff * value if total is None else total + coeff * value
    if total is None:
        raise ValueError(f"objective {obj.name!r} trains no term: give one of {', '.join(T.names())} "
                         "a coefficient > 0 in objective.terms")
    if obj.layers == "all" and taps is not None:
        for name, value in stage_terms(*taps, obj, monitor).items():
            weighted = obj.layer_weight * value
            logged[f"{name}_stages"] = weighted.detach()
            coeff = obj.terms.get(name, 0)
            if coeff > 0 and obj.layer_weight > 0:
                total = total + coeff * weighted
    logged["loss"] = total.detach()
    return total, logged


def ssl_loss(
    z1: torch.Tensor, z2: torch.Tensor, taps1: dict[str, torch.Tensor], taps2: dict[str, torch.Tensor],
    obj: ObjectiveConfig, monitor: bool = True, heads: dict[str, tuple[torch.Tensor, ...]] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A self-supervised arm's loss on two views' projector outputs z (b, d) and stage taps
    (name -> (b, c)); ``heads``: each head-carrying term's outputs per view."""
    return objective_loss(Views((z1, z2), obj.space, heads=heads or {}), obj, monitor, (taps1, taps2))


def metric_loss(
    z: torch.Tensor, labels: torch.Tensor, obj: ObjectiveConfig, monitor: bool = True
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A metric-learning arm's loss (``kind: metric``, e.g. the contrastive loss plus SVMax, as in
    the SVMax paper's retrieval experiments) on one labelled view. z: (b, d), labels: (b,)."""
    return objective_loss(Views((z,), obj.space, labels=labels), obj, monitor)
