"""SVMax (Taha, Hanson, Shrivastava, Davis, "SVMax: A Feature Embedding Regularizer", 2021):
maximize the mean singular value s_mu of the l2-normalized embedding, which lies between known
bounds (Sec. 3, ``embreg.metrics.svmax_bounds``). The linear algebra is ``embreg.terms.spectral``; here are the
normalized score, the loss forms and the term."""

from __future__ import annotations

from typing import Literal

import torch

from embreg.metrics import svmax_bounds  # with the collapse metrics, which report s_mu between them
from embreg.registry import check_choice
from embreg.terms import Param, term
from embreg.terms.spectral import mean_singular_value

SVMaxForm = Literal["score", "neg_mean", "exp"]
SVMAX_FORMS: tuple[str, ...] = ("score", "neg_mean", "exp")


def check_svmax_form(form: str) -> str:
    """``form`` if it is an SVMax loss form; else one line listing the valid ones."""
    return check_choice("SVMax loss form", form, SVMAX_FORMS)


def svmax_score(e: torch.Tensor) -> torch.Tensor:
    """Normalized score (s_mu - L) / (U - L) in [0, 1]; 0 = rank one, 1 = flat spectrum.
    (b, d) -> (), or (n, b, d) -> (n,)."""
    b, d = e.shape[-2:]
    lower, upper = svmax_bounds(b, d)
    if upper == lower:  # k == 1: a single singular value, nothing to spread
        raise ValueError(f"the SVMax score is undefined for k = min(b, d) = 1 (b={b}, d={d})")
    return (mean_singular_value(e) - lower) / (upper - lower)


def svmax_loss(e: torch.Tensor, form: SVMaxForm = "score") -> torch.Tensor:
    """SVMax as a loss to minimize. (b, d) -> (), or (n, b, d) -> (n,)

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


@term("svmax", "SVMax: the mean singular value of the l2-normalized embedding, pushed to its upper bound",
      equation="score: 1 - (s_mu - L) / (U - L), s_mu = mean of the min(b, d) singular values of the "
               "row-normalized embedding, L = sqrt(b)/k, U = sqrt(b/k); mean over the views",
      params={"form": Param("score", "score (1 - normalized score) | neg_mean (the paper's -s_mu) | "
                                     "exp (the official toy's)", choices=SVMAX_FORMS)},
      regularizer=True, monitor=True, kinds=("ssl", "metric"))
def _svmax(views, form: str) -> torch.Tensor:
    zs = views.gathered()  # normalizes its own rows: the arm's space does not matter
    if len(zs) == 1:
        return svmax_loss(zs[0], form)
    return svmax_loss(torch.stack(zs), form).mean()  # both views in one eigensolver call
