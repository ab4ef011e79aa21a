"""Benchmark part 5, SVMax's share: what the GPU part measures at the real shapes on realistic input.

The sync count must be taken where a run spends its steps: at the grid's own profile and shapes
(b = 256, d = 1024 and the stage taps of 64-512 channels, which take the Gram / eigensolver path,
all but the square 256 x 256 tap, which takes torch's SVD), not at a square toy shape that only
ever takes the SVD; on images that look like the data rather than uniform noise; and, for SVMax's
term alone, on a nearly collapsed embedding, the ill-conditioned input on which cuSOLVER's
eigensolvers have failed (a real run's Gram matrices: eigenvalue ratios 1e-6 to 5e-4). So:

- ``structured_images``: Fashion-MNIST-like images (a dark field, a bright class-dependent block
  and bar, mild noise) for the loop's sync count (``SYNC_PROFILE``: the grid's own profile);
- ``low_rank_embedding``: a rank-8 embedding plus noise, for SVMax's term alone at each real
  shape (``term_syncs``: the path taken, the Gram matrix's eigenvalue ratio, the host syncs of
  one forward + backward);
- ``svd_rows``: ``mean_singular_value`` against torch's ``svdvals``, forward + backward.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from embreg.bench.terms import fwd_bwd
from embreg.bench.timing import counting_syncs, interleaved, log, n_syncs, timed
from embreg.config import RunConfig
from embreg.models import build_model
from embreg.params import compose_run
from embreg.terms.spectral import mean_singular_value, spectrum_precision

SYNC_PROFILE = "fmnist_gpu"  # the grid a GPU runs: batch 256, projector 1024, CIFAR stem, bf16, monitor_every 25
LOW_RANK = 8  # rank of the test embedding: a nearly collapsed one, as a network at its start gives
# the noise around it, relative: eigenvalue ratios 2e-6 to 3e-5 at the Gram-path shapes (measured), the
# low end of a real run's
LOW_RANK_NOISE = 3e-2


def _sync(dev: torch.device):
    return torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)


def sync_config(steps: int, device: str, objective: str, extra: tuple[str, ...] | list[str] = ()) -> RunConfig:
    """The grid's profile, one epoch of ``steps`` steps, for ``objective``."""
    return compose_run(SYNC_PROFILE, [f"objective={objective}", f"profile.device={device}", "pretrain.epochs=1",
                                      f"pretrain.steps_per_epoch={steps}", "runtime.progress=false", *extra])


def structured_images(cfg: RunConfig, n: int, gen: torch.Generator) -> torch.Tensor:
    """(n, c, s, s) uint8 images of the dataset's shape that look like Fashion-MNIST's: a dark
    field with noise up to 40, a bright block (a garment's body) and a bar (a sleeve, a strap) whose
    rows and widths depend on the image's class (i mod 10), the intensities drawn per image."""
    ds = cfg.dataset
    c, s = ds.in_channels, ds.image_size
    x = torch.randint(0, 40, (n, c, s, s), generator=gen, dtype=torch.int32)
    level = torch.randint(120, 215, (n,), generator=gen, dtype=torch.int32)
    for i in range(n):
        k = i % 10
        top, width = (k * s) // 20, max(1, s // 4 + (k * s) // 40)
        x[i, :, top : top + s // 2, (s - width) // 2 : (s + width) // 2] += level[i]
        row = min(s - 1, s // 8 + (3 * k * s) // 40)
        x[i, :, row : row + max(1, s // 14), s // 8 : s - s // 8] += level[i] // 2
    return x.clamp_(0, 255).to(torch.uint8)


def real_shapes(cfg: RunConfig) -> list[tuple[int, int]]:
    """(b, d) of every matrix SVMax decomposes in a step of the profile: the final embedding and
    each stage's pooled output (the all-layer arm's taps)."""
    model = build_model(cfg.backbone, cfg.dataset.in_channels, cfg.dataset.num_classes)
    b = cfg.optim.batch_size
    return [(b, model.embed_dim)] + [(b, ch) for ch in model.backbone.tap_dims.values()]


def low_rank_embedding(b: int, d: int, gen: torch.Generator, rank: int = LOW_RANK,
                       noise: float = LOW_RANK_NOISE) -> torch.Tensor:
    """(b, d) float32: ``rank`` random directions mixed per row, plus ``noise`` x their scale."""
    rank = min(rank, b, d)
    e = torch.randn(b, rank, generator=gen) @ torch.randn(rank, d, generator=gen) / rank**0.5
    return e + noise * torch.randn(b, d, generator=gen)


def eig_ratio(e: torch.Tensor) -> float:
    """Smallest over largest eigenvalue of the (smaller) Gram matrix of the row-normalized e."""
    n = F.normalize(e.double(), dim=-1)
    lam = torch.linalg.eigvalsh(n @ n.T if n.shape[0] <= n.shape[1] else n.T @ n)
    return float(lam[0].clamp_min(0) / lam[-1])


def term_syncs(shapes: list[tuple[int, int]], gen: torch.Generator, device: str = "cuda") -> list[dict[str, Any]]:
    """SVMax's term alone (both views stacked, as a step calls it) on a low-rank-plus-noise
    embedding at each shape: its path, the eigenvalue ratio, host syncs of one forward + backward
    (after one uncounted call)."""
    dev, rows = torch.device(device), []
    for b, d in shapes:
        e = torch.stack([low_rank_embedding(b, d, gen) for _ in range(2)]).to(dev).requires_grad_()
        run = fwd_bwd(lambda x: mean_singular_value(x).sum(), e)
        run()
        with counting_syncs(dev) as caught:
            run()
        rows.append({"b": b, "d": d, "path": spectrum_precision(F.normalize(e.detach(), dim=-1)),
                     "eig_ratio": eig_ratio(e.detach()[0].cpu()), "syncs_per_call": n_syncs(caught)})
        log(f"gpu svmax term {b}x{d}: {rows[-1]['path']}, eigenvalue ratio {rows[-1]['eig_ratio']:.1e}, "
            f"{rows[-1]['syncs_per_call']} syncs per forward + backward")
    return rows


def svdvals_mean(e: torch.Tensor) -> torch.Tensor:
    """The reference: torch's own singular values of the row-normalized matrix, their mean."""
    return torch.linalg.svdvals(F.normalize(e, dim=1)).mean()


def svd_rows(shapes: list[tuple[int, int]], repeats: int, gen: torch.Generator, device: str = "cuda") -> list[dict]:
    """SVMax (``mean_singular_value``) against ``svdvals_mean``, forward + backward, float32."""
    dev, rows = torch.device(device), []
    for b, d in shapes:
        e = torch.randn(b, d, generator=gen).to(dev).requires_grad_()
        ours, ref = fwd_bwd(mean_singular_value, e), fwd_bwd(svdvals_mean, e)
        ov, rv = float(ours()), float(ref())
        med = interleaved({"ours": timed(ours, _sync(dev)), "svdvals": timed(ref, _sync(dev))}, repeats)
        rows.append({"b": b, "d": d, "ours_ms": 1e3 * med["ours"], "svdvals_ms": 1e3 * med["svdvals"],
                     "speedup": med["svdvals"] / med["ours"], "rel_diff": abs(ov - rv) / abs(rv)})
        log(f"gpu svmax {b}x{d}: {rows[-1]['ours_ms']:.2f} ms, svdvals {rows[-1]['svdvals_ms']:.2f} ms "
            f"(x{rows[-1]['speedup']:.2f})")
    return rows
