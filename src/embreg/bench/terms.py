"""Benchmark part 1: SVMax against a plain torch.svd reference, and the VICReg terms' times."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from embreg.bench.timing import interleaved, log, timed
from embreg.terms.spectral import mean_singular_value, spectrum_precision
from embreg.terms.vicreg import covariance_term, variance_term

# (b, d, speed-up target of SVMax over the svd reference on the CPU). Square shapes take torch's
# SVD itself (regularizers.uses_svd: the Gram matrix gives no size reduction there), so their
# target is parity, "never slower", less 5% for timing noise between two runs of the same call.
PARITY = 0.95
FULL_SIZES = [(256, 2048, 3.0), (512, 2048, 3.0), (2048, 2048, PARITY), (512, 8192, 3.0)]
QUICK_SIZES = [(32, 64, 3.0), (64, 64, PARITY)]


def svd_mean_singular_value(e: torch.Tensor) -> torch.Tensor:
    """The plain reference: mean singular value of the row-normalized matrix via torch.svd."""
    return torch.svd(F.normalize(e, dim=1))[1].mean()


def fwd_bwd(fn: Callable[..., torch.Tensor], *leaves: torch.Tensor) -> Callable[[], torch.Tensor]:
    """A closure computing fn(*leaves) and its backward (gradients reset first)."""

    def run() -> torch.Tensor:
        for leaf in leaves:
            leaf.grad = None
        out = fn(*leaves)
        out.backward()
        return out.detach()

    return run


def svmax_case(b: int, d: int, repeats: int, gen: torch.Generator) -> dict[str, Any]:
    """Values and forward+backward times of SVMax and the svd reference, plus the VICReg
    variance and covariance terms, on a random (b, d) embedding; and both SVMax sides again on
    a nearly collapsed embedding (one direction plus 1e-2 noise), which takes SVMax's float64
    path."""
    e = torch.randn(b, d, generator=gen).requires_grad_()
    e2 = torch.randn(b, d, generator=gen).requires_grad_()
    near = (torch.randn(1, d, generator=gen) + 1e-2 * torch.randn(b, d, generator=gen)).requires_grad_()
    ours, ref = fwd_bwd(mean_singular_value, e), fwd_bwd(svd_mean_singular_value, e)
    ours_value, ref_value = float(ours()), float(ref())
    med = interleaved({
        "ours": timed(ours), "svd": timed(ref),
        "variance": timed(fwd_bwd(variance_term, e, e2)),
        "covariance": timed(fwd_bwd(covariance_term, e, e2)),
        "near_ours": timed(fwd_bwd(mean_singular_value, near)),
        "near_svd": timed(fwd_bwd(svd_mean_singular_value, near)),
    }, repeats)
    row = {
        "b": b, "d": d, "ours_value": ours_value, "svd_value": ref_value,
        "rel_diff": abs(ours_value - ref_value) / abs(ref_value),
        "precision": spectrum_precision(F.normalize(e.detach(), dim=1)),
        "ours_ms": 1e3 * med["ours"], "svd_ms": 1e3 * med["svd"], "speedup": med["svd"] / med["ours"],
        "variance_ms": 1e3 * med["variance"], "covariance_ms": 1e3 * med["covariance"],
        "near_precision": spectrum_precision(F.normalize(near.detach(), dim=1)),
        "near_ours_ms": 1e3 * med["near_ours"], "near_svd_ms": 1e3 * med["near_svd"],
        "near_speedup": med["near_svd"] / med["near_ours"],
    }
    log(f"svmax {b}x{d}: ours {row['ours_ms']:.1f} ms ({row['precision']}), svd {row['svd_ms']:.1f} ms "
        f"(x{row['speedup']:.2f}), rel diff {row['rel_diff']:.1e}; variance {row['variance_ms']:.1f} ms, "
        f"covariance {row['covariance_ms']:.1f} ms; near collapse: ours {row['near_ours_ms']:.1f} ms "
        f"({row['near_precision']}), svd {row['near_svd_ms']:.1f} ms (x{row['near_speedup']:.2f})")
    return row


def rank_one_case(b: int, d: int, gen: torch.Generator) -> dict[str, Any]:
    """SVMax of a collapsed embedding (every row the same direction, scaled): its gradient
    must stay finite."""
    direction = torch.randn(d, generator=gen)
    scales = torch.rand(b, 1, generator=gen) + 0.5
    e = (scales * direction).requires_grad_()
    value = mean_singular_value(e)
    value.backward()
    row = {"b": b, "d": d, "value": float(value.detach()), "grad_finite": bool(torch.isfinite(e.grad).all())}
    log(f"svmax rank one {b}x{d}: value {row['value']:.4g}, finite gradient {row['grad_finite']}")
    return row
