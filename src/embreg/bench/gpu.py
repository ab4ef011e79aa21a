"""Benchmark part 5, on a GPU. Every figure is measured in one process, the competitors of a
ratio interleaved round by round (medians), against the bare reference of ``bench.steps``:

- ``cifar10`` / ``imagenet``: images/s and peak memory of the library's step and of the bare
  reference, fp32 and bf16 autocast, at the profile's per-GPU batch (random images on the GPU,
  augmentation included); on CIFAR-10 also the SVMax arm's bf16 step (VICReg is the others');
- ``loop``: the real loop (``pretrain.pretrain``: data indexing from a CPU split, schedule,
  logging, progress bar as the run config says, the epoch-end checkpoint) against the library's
  step alone on one ready batch, CIFAR-10 bf16, per step over one epoch of ``loop_steps``;
- ``syncs``: host syncs per step of the real loop, per SSL arm (VICReg, SVMax, SVMax on every
  layer), counted with ``torch.cuda.set_sync_debug_mode("warn")``: the difference between loops
  of two lengths (the set-up, the epoch-end checkpoint and the final check cancel out) over the
  difference in steps, at the grid's own profile and shapes on Fashion-MNIST-like images; and
  SVMax's term alone on a low-rank-plus-noise embedding at each of those shapes
  (``bench.svmax_gpu``: why not random noise);
- ``svd``: ``mean_singular_value`` against ``torch.linalg.svdvals(normalize(e)).mean()``,
  forward + backward, at the bench's (b, d) shapes.

Each part is recorded as it ends (``on_part``) and a part that fails is recorded as such, so
the others stand. ``device="cpu"`` with ``QUICK`` sizes runs all of it tiny (the tests).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from embreg.bench.steps import (
    Step,
    bare_model,
    bare_step,
    block,
    library_model,
    library_step,
    ready_views,
    synthetic_images,
)
from embreg.bench.svmax_gpu import (
    SYNC_PROFILE,
    real_shapes,
    structured_images,
    svd_rows,
    sync_config,
    term_syncs,
)
from embreg.bench.terms import FULL_SIZES, QUICK_SIZES
from embreg.bench.timing import counting_syncs, interleaved, log, n_syncs
from embreg.config import RunConfig
from embreg.data import Split
from embreg.optim import build_optimizer
from embreg.params import compose_run
from embreg.pretrain import peak_memory_mb, pretrain

GPU_PROFILES = ["cifar10", "imagenet"]
GPU_OVERRIDES = {"imagenet": ["optim.batch_size=256"]}  # one GPU's share of ImageNet's 2048 (8 GPUs)
OOM_FALLBACK = "optim.batch_size=128"  # when 256 ImageNet images do not fit this GPU
STEP_PROFILE = "cifar10"  # the step, loop, arm and sync figures
NO_GPU = "no GPU on this machine"


@dataclass(frozen=True)
class GpuSizes:
    steps: int = 10  # steps per timed block, CIFAR-10
    big_steps: int = 3  # ImageNet (ResNet-50 at 224 px)
    loop_steps: int = 50  # the loop's epoch: one checkpoint per 50 steps (the cifar10 profile: per 195)
    sync_steps: tuple[int, int] = (10, 60)  # the two loop lengths whose difference counts syncs per step
    shapes: list[tuple[int, int]] = field(default_factory=lambda: [(b, d) for b, d, _ in FULL_SIZES])
    extra: tuple[str, ...] = ()  # overrides for every config (quick: tiny)


QUICK = GpuSizes(1, 1, 2, (1, 2), [(b, d) for b, d, _ in QUICK_SIZES],
                 ("optim.batch_size=4", "backbone.projector=[16,16]", "dataset.image_size=8"))  # bf16 on a CPU is slow


def gpu_config(profile: str, precision: str, device: str, objective: str = "vicreg",
               extra: tuple[str, ...] | list[str] = ()) -> RunConfig:
    return compose_run(profile, [f"objective={objective}", f"pretrain.precision={precision}",
                                 f"profile.device={device}", *GPU_OVERRIDES.get(profile, []), *extra])


def _sync(dev: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)


def _free(dev: torch.device) -> None:
    """Give cached GPU memory back between parts (after a failed part too: never raises)."""
    if dev.type == "cuda":
        try:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
        except Exception:  # noqa: BLE001 - a broken context: the next part will say so itself
            pass


def _resident_bytes(model: torch.nn.Module, opt: torch.optim.Optimizer) -> int:
    tensors = [*model.parameters(), *model.buffers(), *(p.grad for p in model.parameters() if p.grad is not None),
               *(v for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor))]
    return sum(t.numel() * t.element_size() for t in tensors)


def own_peak_mb(step: Step, model: torch.nn.Module, opt: torch.optim.Optimizer, dev: torch.device) -> float:
    """Peak memory of one step of this competitor alone, MiB: on a GPU its transient peak over
    what was allocated before it plus its own weights, gradients and optimizer state (the other
    competitors' stay resident beside it); on a CPU the process's peak RSS."""
    step()  # the optimizer state exists from here on
    if dev.type != "cuda":
        return peak_memory_mb(dev)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    step()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated(dev) - before + _resident_bytes(model, opt)) / 2**20


def gpu_setting(profile: str, steps: int, repeats: int, gen: torch.Generator, device: str = "cuda",
                extra: tuple[str, ...] | list[str] | None = None, svmax: bool = False) -> dict[str, Any]:
    """fp32 against bf16 autocast for a profile at its per-GPU batch: the library's step and
    the bare reference at each precision (and with ``svmax`` the SVMax arm's bf16 step),
    images/s (``steps`` per timed block) and peak memory. ``device`` and ``extra`` overrides let
    the tests run it small on a CPU."""
    dev = torch.device(device)
    cfgs = {p: gpu_config(profile, p, device, extra=extra or ()) for p in ("fp32", "bf16")}
    if svmax:
        cfgs["svmax"] = gpu_config(profile, "bf16", device, "svmax", extra or ())
    batch = cfgs["fp32"].optim.batch_size
    x = synthetic_images(cfgs["fp32"], batch, gen, dev)
    competitors, peaks = {}, {}
    for name, cfg in cfgs.items():
        builds = [("step", library_model(cfg, dev), lambda m, o, c=cfg: library_step(c, m, x, optimizer=o)[0])]
        if name != "svmax":
            views = ready_views(cfg, x, gen)
            builds.append(("bare", bare_model(cfg, dev), lambda m, o, c=cfg, v=views: bare_step(c, m, v, o)[0]))
        for kind, model, build in builds:
            opt = build_optimizer(model, cfg.optim)
            competitors[f"{kind}_{name}"] = step = build(model, opt)
            peaks[f"{kind}_{name}"] = own_peak_mb(step, model, opt, dev)
    med = interleaved({n: block(s, steps, _sync(dev)) for n, s in competitors.items()}, repeats)
    out: dict[str, Any] = {"batch": batch, "image_size": cfgs["fp32"].dataset.image_size,
                           "steps_per_measurement": steps, "repeats": repeats}
    for name in cfgs:
        out[name] = {"images_per_sec": batch / med[f"step_{name}"], "ms_per_step": 1e3 * med[f"step_{name}"],
                     "peak_memory_mb": peaks[f"step_{name}"]}
        if name != "svmax":
            out[name].update(bare_images_per_sec=batch / med[f"bare_{name}"], bare_ms_per_step=1e3 * med[f"bare_{name}"],
                             bare_peak_memory_mb=peaks[f"bare_{name}"])
        log(f"gpu {profile} {name}: step {out[name]['images_per_sec']:.0f} img/s, "
            f"peak {out[name]['peak_memory_mb']:.0f} MiB"
            + (f"; bare {out[name]['bare_images_per_sec']:.0f} img/s" if name != "svmax" else ""))
    del competitors
    _free(dev)
    return out


def random_split(n: int, cfg: RunConfig, gen: torch.Generator) -> Split:
    """n random uint8 images of the dataset's shape on the CPU (as a run loads its split), labels 0."""
    return Split(synthetic_images(cfg, n, gen), torch.zeros(n, dtype=torch.long))


def _pretrain_once(cfg: RunConfig, split: Split, dev: torch.device, tmp: Path) -> float:
    """Seconds of the real loop on a fresh model (built before the clock starts), from scratch:
    no checkpoint to resume from, and none left behind."""
    ckpt = tmp / "ckpt.pt"
    ckpt.unlink(missing_ok=True)
    model, sync = library_model(cfg, dev), _sync(dev)
    sync()
    t0 = time.perf_counter()
    pretrain(cfg, model, split, ckpt, progress=cfg.runtime.progress)
    sync()
    seconds = time.perf_counter() - t0
    ckpt.unlink(missing_ok=True)
    return seconds


def loop_config(steps: int, device: str, objective: str, extra: tuple[str, ...]) -> RunConfig:
    return gpu_config(STEP_PROFILE, "bf16", device, objective,
                      [*extra, "pretrain.epochs=1", f"pretrain.steps_per_epoch={steps}"])


def loop_vs_step(steps: int, repeats: int, gen: torch.Generator, device: str = "cuda",
                 extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """Seconds per step of the real loop over one epoch of ``steps`` (model built outside the
    clock; its epoch-end checkpoint inside) against the library's step alone on one ready batch;
    ratio = step / loop seconds (the loop's images/s over the step's)."""
    dev, cfg = torch.device(device), loop_config(steps, device, "vicreg", extra)
    split = random_split(steps * cfg.optim.batch_size, cfg, gen)
    step = library_step(cfg, library_model(cfg, dev), split.images[: cfg.optim.batch_size].to(dev))[0]
    with tempfile.TemporaryDirectory() as tmp:
        med = interleaved({"loop": lambda: _pretrain_once(cfg, split, dev, Path(tmp)) / steps,
                           "step": block(step, steps, _sync(dev))}, repeats)
    out = {"steps": steps, "steps_per_checkpoint": steps, "loop_ms_per_step": 1e3 * med["loop"],
           "step_ms_per_step": 1e3 * med["step"], "ratio": med["step"] / med["loop"]}
    log(f"gpu loop: {out['loop_ms_per_step']:.1f} ms/step, step alone {out['step_ms_per_step']:.1f} "
        f"(ratio {out['ratio']:.3f})")
    _free(dev)
    return out


SYNC_ARMS = ("vicreg", "svmax", "svmax_all")  # per_step: the worse of the first two (svmax_all: one wait per layer)


def syncs_per_step(lengths: tuple[int, int], gen: torch.Generator, device: str = "cuda",
                   extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """Host syncs per step of the real loop for each SSL arm, at the grid's profile
    (``svmax_gpu.SYNC_PROFILE``) on Fashion-MNIST-like images: syncs(loop of n2 steps) -
    syncs(loop of n1 steps), over n2 - n1 (after an uncounted warm-up loop); also the library
    step's own, over n2 - n1 steps; and SVMax's term alone at each of the profile's shapes
    (``term``). ``per_step``: the worse of VICReg and SVMax. A calibration (one ``.item()``)
    must count at least 1 on a GPU, else the count is not trusted."""
    dev, (n1, n2) = torch.device(device), lengths
    with counting_syncs(dev) as caught:
        torch.ones(1, device=dev).add(1).item()
    out: dict[str, Any] = {"lengths": list(lengths), "calibration": n_syncs(caught), "profile": SYNC_PROFILE}
    if dev.type == "cuda" and out["calibration"] < 1:
        raise RuntimeError("sync debug mode counted no sync for an .item(): its warnings are not captured")
    with tempfile.TemporaryDirectory() as tmp:
        for arm in SYNC_ARMS:
            cfgs = {n: sync_config(n, device, arm, extra) for n in (n1, n2)}
            split = Split(structured_images(cfgs[n1], n2 * cfgs[n1].optim.batch_size, gen),
                          torch.zeros(n2 * cfgs[n1].optim.batch_size, dtype=torch.long))
            _pretrain_once(cfgs[n1], split, dev, Path(tmp))  # warm-up: one-time syncs happen here
            counts = {}
            for n, cfg in cfgs.items():
                with counting_syncs(dev) as caught:
                    _pretrain_once(cfg, split, dev, Path(tmp))
                counts[n] = n_syncs(caught)
            step = library_step(cfgs[n1], library_model(cfgs[n1], dev), split.images[: cfgs[n1].optim.batch_size].to(dev))[0]
            step()
            with counting_syncs(dev) as caught:
                for _ in range(n2 - n1):
                    step()
            out[arm] = {"loop_syncs": {str(n): c for n, c in counts.items()},
                        "loop_per_step": (counts[n2] - counts[n1]) / (n2 - n1),
                        "step_per_step": n_syncs(caught) / (n2 - n1)}
            log(f"gpu syncs {arm}: loop {out[arm]['loop_per_step']:.2f}/step, step alone "
                f"{out[arm]['step_per_step']:.2f}/step")
        out["term"] = term_syncs(real_shapes(sync_config(n1, device, "svmax", extra)), gen, device)
    out["per_step"] = max(out[arm]["loop_per_step"] for arm in ("vicreg", "svmax"))
    _free(dev)
    return out


def _imagenet(sizes: GpuSizes, repeats: int, gen: torch.Generator, device: str) -> dict[str, Any]:
    try:
        return gpu_setting("imagenet", sizes.big_steps, repeats, gen, device, sizes.extra)
    except torch.OutOfMemoryError:
        pass  # the failed attempt's tensors go with its traceback, at the end of this block
    _free(torch.device(device))
    log(f"gpu imagenet: out of memory at the profile's batch; again with {OOM_FALLBACK}")
    return gpu_setting("imagenet", sizes.big_steps, repeats, gen, device, [OOM_FALLBACK, *sizes.extra])


def gpu_section(sizes: GpuSizes, repeats: int, gen: torch.Generator, device: str = "cuda",
                on_part: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Every GPU part in order of importance (ImageNet, the slowest, last); a failed part is
    recorded as "failed (...)" and the next one runs. ``on_part`` gets the result so far."""
    dev = torch.device(device)
    out: dict[str, Any] = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else str(dev),
                           "profiles": GPU_PROFILES, "sizes": asdict(sizes)}
    parts: list[tuple[str, Callable[[], Any]]] = [
        ("cifar10", lambda: gpu_setting("cifar10", sizes.steps, repeats, gen, device, sizes.extra, svmax=True)),
        ("loop", lambda: loop_vs_step(sizes.loop_steps, repeats, gen, device, sizes.extra)),
        ("syncs", lambda: syncs_per_step(sizes.sync_steps, gen, device, sizes.extra)),
        ("svd", lambda: svd_rows(sizes.shapes, max(repeats, 3), gen, device)),
        ("imagenet", lambda: _imagenet(sizes, repeats, gen, device)),
    ]
    for name, part in parts:
        try:
            out[name] = part()
        except Exception as exc:  # noqa: BLE001 - recorded; the other parts still run
            out[name] = f"failed ({type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''})"
            log(f"gpu {name}: {out[name]}")
        _free(dev)  # here, not in the except block: a failed part's tensors live as long as its traceback
        if on_part:
            on_part(out)
    return out
