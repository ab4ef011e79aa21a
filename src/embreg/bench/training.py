"""Benchmark parts 2-3 (CPU): the library's training step (``bench.steps``: train_step + the
run's optimizer) against the bare reference on the same batch, and all- against last-layer step
time. The GPU part is ``bench.gpu``."""

from __future__ import annotations

from typing import Any

import torch

from embreg.bench.steps import (
    bare_model,
    bare_step,
    fresh_median,
    library_model,
    library_step,
    ready_views,
    synthetic_images,
)
from embreg.bench.terms import fwd_bwd
from embreg.bench.timing import Measure, interleaved, log, timed
from embreg.config import RunConfig
from embreg.data import Normalizer, two_views
from embreg.objective import ssl_loss
from embreg.params import compose_run
from embreg.pretrain import augment_spec


def bench_config(objective: str, batch: int, steps: int, extra: list[str]) -> RunConfig:
    """The default profile's run for ``objective``, pretraining ``steps`` steps of ``batch``
    (``extra``: further overrides, e.g. a smaller projector in quick mode)."""
    return compose_run("default", [
        f"objective={objective}", f"optim.batch_size={batch}",
        "pretrain.epochs=1", f"pretrain.steps_per_epoch={steps}", "profile.device=cpu", *extra,
    ])


def step_measure(cfg: RunConfig, x: torch.Tensor) -> Measure:
    """One measurement: the library's step (train_step + optimizer) on a fresh model, median
    over the configured steps after a warm-up step."""
    return fresh_median(lambda: library_step(cfg, library_model(cfg), x)[0], cfg.pretrain.steps_per_epoch)


def bare_measure(cfg: RunConfig, views: tuple[torch.Tensor, torch.Tensor]) -> Measure:
    """One measurement: the bare reference's step on ready views, fresh model, median over the
    configured steps after a warm-up step."""
    return fresh_median(lambda: bare_step(cfg, bare_model(cfg), views)[0], cfg.pretrain.steps_per_epoch)


def gap_parts(cfg: RunConfig, x: torch.Tensor, repeats: int) -> dict[str, float]:
    """Milliseconds of the work pretrain does beyond the bare model: the two augmented views,
    and the objective's forward+backward on embeddings of the model's output size, with the
    terms the arm only logs (a step where ``pretrain.monitor_every`` falls) and without them;
    ``monitor_ms`` is their difference, the logging-only terms' cost on such a step."""
    norm, spec, gen = Normalizer(cfg.dataset.mean, cfg.dataset.std), augment_spec(cfg), torch.Generator()
    d = cfg.backbone.projector[-1]
    z1, z2 = (torch.randn(len(x), d, generator=gen).requires_grad_() for _ in range(2))

    def loss(monitor: bool) -> Measure:
        return timed(fwd_bwd(lambda a, b: ssl_loss(a, b, {}, {}, cfg.objective, monitor)[0], z1, z2))

    med = interleaved({"augment": timed(lambda: two_views(x, spec, norm, gen)),
                       "loss": loss(True), "loss_unmonitored": loss(False)}, repeats)
    ms = {f"{k}_ms": 1e3 * v for k, v in med.items()}
    return {**ms, "monitor_ms": ms["loss_ms"] - ms["loss_unmonitored_ms"]}


def throughput(batch: int, steps: int, extra: list[str], repeats: int, gen: torch.Generator) -> dict[str, Any]:
    """Images/s of the library's step (default profile, VICReg; ``pretrain_*`` keys) against the
    bare reference on the same batch, and the parts of the difference."""
    cfg = bench_config("vicreg", batch, steps, extra)
    x = synthetic_images(cfg, batch, gen)
    med = interleaved({"pretrain": step_measure(cfg, x), "bare": bare_measure(cfg, ready_views(cfg, x, gen))},
                      repeats)
    row = {
        "batch": batch, "steps_per_measurement": steps, "step": "train_step + optimizer",
        "pretrain_ms_per_step": 1e3 * med["pretrain"], "bare_ms_per_step": 1e3 * med["bare"],
        "pretrain_images_per_sec": batch / med["pretrain"], "bare_images_per_sec": batch / med["bare"],
        "ratio": med["bare"] / med["pretrain"], **gap_parts(cfg, x, repeats),
    }
    log(f"throughput batch {batch}: train_step {row['pretrain_images_per_sec']:.1f} img/s, "
        f"bare {row['bare_images_per_sec']:.1f} img/s (ratio {row['ratio']:.3f}); "
        f"augment {row['augment_ms']:.1f} ms, loss {row['loss_ms']:.1f} ms "
        f"({row['monitor_ms']:.1f} of it logging-only terms)")
    return row


def layer_pair(last: str, all_: str, batch: int, steps: int, extra: list[str], repeats: int,
               gen: torch.Generator) -> dict[str, Any]:
    """The library's step time with a regularizer on every stage against the last layer only."""
    cfgs = {name: bench_config(name, batch, steps, extra) for name in (last, all_)}
    x = synthetic_images(cfgs[last], batch, gen)
    med = interleaved({name: step_measure(cfg, x) for name, cfg in cfgs.items()}, repeats)
    row = {"last": last, "all": all_, "batch": batch, "last_ms_per_step": 1e3 * med[last],
           "all_ms_per_step": 1e3 * med[all_], "ratio": med[all_] / med[last]}
    log(f"layers {all_} vs {last}: {row['all_ms_per_step']:.0f} vs {row['last_ms_per_step']:.0f} ms/step "
        f"(ratio {row['ratio']:.3f})")
    return row
