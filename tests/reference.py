"""Reference objectives that only tests use (the library composes its arms in objective.py)."""

from __future__ import annotations

import torch

from embreg.terms import vicreg as R


def vicreg_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    sim_coeff: float = 25.0,
    std_coeff: float = 25.0,
    cov_coeff: float = 1.0,
) -> torch.Tensor:
    """The VICReg objective (paper defaults lambda=25, mu=25, nu=1) from the library's terms, as
    the official code weights them (kept here: only tests use it; arms go through objective.py).
    (b, d) x2 -> ()

    Equals the value the official ``main_vicreg.py`` computes on one process: the
    variance term is halved, the covariance term is summed over the views.
    """
    for name, value in (("sim_coeff", sim_coeff), ("std_coeff", std_coeff), ("cov_coeff", cov_coeff)):
        if not value >= 0:  # also catches NaN
            raise ValueError(f"{name} must be >= 0, got {value}")
    return (
        sim_coeff * R.invariance(z1, z2)
        + std_coeff * R.variance_term(z1, z2)
        + cov_coeff * R.covariance_term(z1, z2)
    )
