"""SimSiam (Chen & He, "Exploring Simple Siamese Representation Learning", CVPR 2021, Algorithm 1
and Sec. 3): a predictor MLP h on the projector output, the negative cosine similarity between
one view's prediction and the other view's embedding, symmetrized, with a stop-gradient on the
target branch. ``stop_gradient: false`` drops it: the variant the paper shows collapsing.

The predictor is the paper's: Linear(d, d * bottleneck, no bias) - BN - ReLU - Linear(., d), with
a bottleneck of d/4 (2048 -> 512 -> 2048 there). The projector is the suite's own, shared with
every arm, so that arms differ in their loss only. The loss ignores the embedding's length: a term
on raw per-dimension std can be met by lengths alone. Tested against the paper's pseudocode in
tests/terms/test_simsiam.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from embreg.terms import Param, term


def predictor(dim: int, bottleneck: float = 0.25, **_: object) -> nn.Sequential:
    """SimSiam's predictor h: (b, dim) -> (b, dim) through a (b, dim * bottleneck) layer."""
    hidden = max(1, round(dim * bottleneck))
    return nn.Sequential(nn.Linear(dim, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, dim))


def negative_cosine(p: torch.Tensor, z: torch.Tensor, stop_gradient: bool = True) -> torch.Tensor:
    """D(p, z) = -mean_i cos(p_i, z_i), with z detached when ``stop_gradient``. (b, d) x2 -> ()"""
    return -F.cosine_similarity(p, z.detach() if stop_gradient else z, dim=-1).mean()


def simsiam_loss(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor,
                 stop_gradient: bool = True) -> torch.Tensor:
    """L = D(p1, z2) / 2 + D(p2, z1) / 2 (Algorithm 1). (b, d) x4 -> (), in [-1, 1]"""
    return negative_cosine(p1, z2, stop_gradient) / 2 + negative_cosine(p2, z1, stop_gradient) / 2


@term("simsiam", "SimSiam: each view's prediction matches the other view's embedding (negative cosine)",
      equation="D(h(z1), sg(z2)) / 2 + D(h(z2), sg(z1)) / 2, D(p, z) = -mean cos(p, z); "
               "h: Linear-BN-ReLU-Linear with a d/4 bottleneck",
      params={"stop_gradient": Param(True, "detach the target branch (false: the collapsing variant)"),
              "bottleneck": Param(0.25, "the predictor's hidden width as a fraction of d", lo=0, hi=1, lo_open=True)},
      head=predictor)
def _simsiam(views, stop_gradient: bool, bottleneck: float) -> torch.Tensor:
    z1, z2 = views.z  # a per-sample loss: this rank's rows
    p1, p2 = views.heads["simsiam"]
    return simsiam_loss(p1, p2, z1, z2, stop_gradient)
