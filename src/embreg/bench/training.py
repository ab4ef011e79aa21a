"""Benchmark parts 2-4: pretraining throughput against the bare model, all- against
last-layer step time, and fp32 against bf16 on a GPU. Pretraining is timed through
``pretrain`` and ``train_step`` themselves; the bare model's step is the reference they are
compared with (forward+backward+optimizer only)."""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch

from embreg.bench.terms import fwd_bwd
from embreg.bench.timing import Measure, interleaved, log, timed
from embreg.config import RunConfig
from embreg.data import Normalizer, Split, two_views
from embreg.models import build_model
from embreg.objective import ssl_loss
from embreg.optim import build_optimizer
from embreg.params import compose_run
from embreg.pretrain import augment_spec, peak_memory_mb, pretrain, train_step

GPU_PROFILES = ["cifar10", "imagenet"]
# one GPU's share of the profile's batch: ImageNet's 2048 is meant for 8 GPUs
GPU_OVERRIDES = {"imagenet": ["optim.batch_size=256"]}
NO_GPU = "no GPU on this machine"


def bench_config(objective: str, batch: int, steps: int, extra: list[str]) -> RunConfig:
    """The default profile's run for ``objective``, pretraining ``steps`` steps of ``batch``
    (``extra``: further overrides, e.g. a smaller projector in quick mode)."""
    return compose_run("default", [
        f"objective={objective}", f"optim.batch_size={batch}",
        "pretrain.epochs=1", f"pretrain.steps_per_epoch={steps}", "profile.device=cpu", *extra,
    ])


def random_split(n: int, cfg: RunConfig, gen: torch.Generator) -> Split:
    """n random uint8 images of the dataset's shape, with random labels (timing needs no data)."""
    ds = cfg.dataset
    images = torch.randint(0, 256, (n, ds.in_channels, ds.image_size, ds.image_size),
                           dtype=torch.uint8, generator=gen)
    return Split(images, torch.randint(0, ds.num_classes, (n,), generator=gen))


def pretrain_measure(cfg: RunConfig, split: Split) -> Measure:
    """One measurement: a fresh model pretrained for the configured steps by ``pretrain``
    itself; returns its median step time (its first step excluded)."""

    def measure() -> float:
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.backbone, cfg.dataset.in_channels, cfg.dataset.num_classes)
        with tempfile.TemporaryDirectory() as tmp:
            out = pretrain(cfg, model, split, Path(tmp) / "ckpt.pt", progress=False)
        return out["cost"]["sec_per_step"]

    return measure


def bare_measure(cfg: RunConfig, views: tuple[torch.Tensor, torch.Tensor]) -> Measure:
    """One measurement: the bare model's forward+backward+optimizer step on ready views (no
    augmentation, loss = plain sum of the outputs), median over the configured steps."""

    def measure() -> float:
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.backbone, cfg.dataset.in_channels, cfg.dataset.num_classes).train()
        optimizer = build_optimizer(model, cfg.optim)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            (model(views[0])[0].sum() + model(views[1])[0].sum()).backward()
            optimizer.step()

        step()  # like pretrain's cost: the first step (allocator warm-up) is not counted
        return statistics.median(timed(step)() for _ in range(cfg.pretrain.steps_per_epoch - 1))

    return measure


def gap_parts(cfg: RunConfig, x: torch.Tensor, repeats: int) -> dict[str, float]:
    """Milliseconds of the work pretrain does beyond the bare model: the two augmented views,
    and the objective's forward+backward on embeddings of the model's output size."""
    norm, spec, gen = Normalizer(cfg.dataset.mean, cfg.dataset.std), augment_spec(cfg), torch.Generator()
    d = cfg.backbone.projector[-1]
    z1, z2 = (torch.randn(len(x), d, generator=gen).requires_grad_() for _ in range(2))
    med = interleaved({
        "augment": timed(lambda: two_views(x, spec, norm, gen)),
        "loss": timed(fwd_bwd(lambda a, b: ssl_loss(a, b, {}, {}, cfg.objective)[0], z1, z2)),
    }, repeats)
    return {"augment_ms": 1e3 * med["augment"], "loss_ms": 1e3 * med["loss"]}


def throughput(batch: int, steps: int, extra: list[str], repeats: int, gen: torch.Generator) -> dict[str, Any]:
    """Images/s of `pretrain` (default profile, VICReg) against the bare model on the same
    batch size, and the parts of the difference."""
    cfg = bench_config("vicreg", batch, steps, extra)
    split = random_split(4 * batch, cfg, gen)
    x = split.images[:batch]
    views = two_views(x, augment_spec(cfg), Normalizer(cfg.dataset.mean, cfg.dataset.std), gen)
    med = interleaved({"pretrain": pretrain_measure(cfg, split), "bare": bare_measure(cfg, views)}, repeats)
    row = {
        "batch": batch, "steps_per_measurement": steps,
        "pretrain_ms_per_step": 1e3 * med["pretrain"], "bare_ms_per_step": 1e3 * med["bare"],
        "pretrain_images_per_sec": batch / med["pretrain"], "bare_images_per_sec": batch / med["bare"],
        "ratio": med["bare"] / med["pretrain"], **gap_parts(cfg, x, repeats),
    }
    log(f"throughput batch {batch}: pretrain {row['pretrain_images_per_sec']:.1f} img/s, "
        f"bare {row['bare_images_per_sec']:.1f} img/s (ratio {row['ratio']:.3f}); "
        f"augment {row['augment_ms']:.1f} ms, loss {row['loss_ms']:.1f} ms")
    return row


def layer_pair(last: str, all_: str, batch: int, steps: int, extra: list[str], repeats: int,
               gen: torch.Generator) -> dict[str, Any]:
    """Pretraining step time with a regularizer on every stage against the last layer only."""
    cfgs = {name: bench_config(name, batch, steps, extra) for name in (last, all_)}
    split = random_split(4 * batch, cfgs[last], gen)
    med = interleaved({name: pretrain_measure(cfg, split) for name, cfg in cfgs.items()}, repeats)
    row = {"last": last, "all": all_, "batch": batch, "last_ms_per_step": 1e3 * med[last],
           "all_ms_per_step": 1e3 * med[all_], "ratio": med[all_] / med[last]}
    log(f"layers {all_} vs {last}: {row['all_ms_per_step']:.0f} vs {row['last_ms_per_step']:.0f} ms/step "
        f"(ratio {row['ratio']:.3f})")
    return row


def gpu_setting(profile: str, steps: int, repeats: int, gen: torch.Generator, device: str = "cuda",
                extra: list[str] | None = None) -> dict[str, Any] | str:
    """fp32 against bf16 autocast pretraining steps (augmentation on the GPU included) for a
    profile at its per-GPU batch, or "not available". ``device`` and ``extra`` overrides let
    the tests run it small on a CPU."""
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    out: dict[str, Any] = {}
    for name in ("fp32", "bf16"):
        try:
            cfg = compose_run(profile, ["objective=vicreg", "pretrain.epochs=1", f"pretrain.steps_per_epoch={steps}",
                                        f"pretrain.precision={name}", f"profile.device={device}",
                                        *GPU_OVERRIDES.get(profile, []), *(extra or [])])
        except Exception as exc:  # the profile does not exist (yet): record, do not fail the bench
            log(f"gpu {profile}: not available ({type(exc).__name__})")
            return f"not available ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        batch = cfg.optim.batch_size
        x = random_split(batch, cfg, gen).images.to(dev)
        y = torch.zeros(batch, dtype=torch.long, device=dev)
        norm = Normalizer(cfg.dataset.mean, cfg.dataset.std)
        out.update(batch=batch, image_size=cfg.dataset.image_size)
        model = build_model(cfg.backbone, cfg.dataset.in_channels, cfg.dataset.num_classes).to(dev)
        optimizer = build_optimizer(model, cfg.optim)

        def step(model=model, optimizer=optimizer, cfg=cfg, x=x, y=y, norm=norm) -> None:
            loss, _ = train_step(model, x, y, cfg, norm, torch.Generator().manual_seed(0))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        if cuda:
            torch.cuda.reset_peak_memory_stats(dev)
        sec = interleaved({name: timed(step, torch.cuda.synchronize) if cuda else timed(step)}, repeats)[name]
        out[name] = {"images_per_sec": batch / sec,
                     "peak_memory_mb": peak_memory_mb(dev)}
        log(f"gpu {profile} {name}: {out[name]['images_per_sec']:.0f} img/s, "
            f"peak {out[name]['peak_memory_mb']:.0f} MiB")
        del model, optimizer, x
        if cuda:
            torch.cuda.empty_cache()
    return out


def gpu_part(repeats: int, gen: torch.Generator) -> dict[str, Any] | str:
    if not torch.cuda.is_available():
        log(f"gpu: {NO_GPU}")
        return NO_GPU
    return {"device": torch.cuda.get_device_name(), **{p: gpu_setting(p, 2, repeats, gen) for p in GPU_PROFILES}}
