"""`embreg bench`: speed of SVMax and the VICReg terms, and pretraining throughput.

Measures (all ratios in one run, since the machine is shared and noisy):

1. SVMax forward+backward (``mean_singular_value``) against a plain ``torch.svd`` reference,
   with their values, a rank-one gradient check, and the variance / covariance terms' times;
2. pretraining throughput of the default profile against the bare model's forward+backward;
3. the step time of all-layer against last-layer regularization;
4. on a GPU: images/s and peak memory, fp32 against bf16 autocast.

Every number is a median over ``--repeats`` measurements after a warm-up, the competitors of a
ratio interleaved round by round. Results: ``<out>/bench.json`` and ``<out>/BENCH.md``, each
target with its value and whether it is met.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tabulate import tabulate

from embreg.config import RunConfig
from embreg.data import Normalizer, Split, two_views
from embreg.io import git_revision, write_json, write_text
from embreg.models import build_model
from embreg.objective import ssl_loss
from embreg.optim import build_optimizer
from embreg.params import REPO_ROOT, compose_run
from embreg.pretrain import augment_spec, peak_memory_mb, pretrain
from embreg.regularizers import covariance_term, mean_singular_value, spectrum_precision, variance_term

# (b, d, speed-up target of SVMax over the svd reference)
FULL_SIZES = [(256, 2048, 3.0), (512, 2048, 3.0), (2048, 2048, 1.5), (512, 8192, 3.0)]
QUICK_SIZES = [(32, 64, 3.0), (64, 64, 1.5)]
QUICK_OVERRIDES = ["backbone.projector=[64,64]"]  # quick mode: a small projector on the same backbone
AGREEMENT_TOL = 1e-4  # relative difference of SVMax against the svd reference
THROUGHPUT_TARGET = 0.85  # pretraining images/s over the bare model's
LAYERS_TARGET = 1.25  # all-layer step time over last-layer
LAYER_PAIRS = [("vicreg", "vicreg_all"), ("svmax", "svmax_all")]
GPU_PROFILES = ["cifar10", "imagenet"]
# one GPU's share of the profile's batch: ImageNet's 2048 is meant for 8 GPUs
GPU_OVERRIDES = {"imagenet": ["optim.batch_size=256"]}
NO_GPU = "no GPU on this machine"

Measure = Callable[[], float]  # one measurement: returns seconds


def log(msg: str) -> None:
    """One progress line per measurement (stderr, so stdout stays clean)."""
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def timed(fn: Callable[[], Any], sync: Callable[[], None] = lambda: None) -> Measure:
    """Wrap ``fn`` into a measurement of its wall time (``sync`` waits for a device)."""

    def measure() -> float:
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - t0

    return measure


def interleaved(measures: dict[str, Measure], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds of each measurement, run round-robin so drift hits all alike;
    the first ``warmup`` rounds are discarded."""
    times: dict[str, list[float]] = {name: [] for name in measures}
    for r in range(warmup + repeats):
        for name, measure in measures.items():
            t = measure()
            if r >= warmup:
                times[name].append(t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def target(value: float | bool, goal: float | bool, op: str) -> dict[str, Any]:
    """A target entry; ``op`` is how value compares with goal to count as met."""
    met = {">=": lambda: value >= goal, "<=": lambda: value <= goal, "==": lambda: value == goal}[op]()
    return {"value": value, "target": goal, "op": op, "met": bool(met)}


# --- 1. SVMax and the VICReg terms -------------------------------------------------------------


def svd_mean_singular_value(e: torch.Tensor) -> torch.Tensor:
    """The plain reference: mean singular value of the row-normalized matrix via torch.svd."""
    return torch.svd(F.normalize(e, dim=1))[1].mean()


def _fwd_bwd(fn: Callable[..., torch.Tensor], *leaves: torch.Tensor) -> Callable[[], torch.Tensor]:
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
    ours, ref = _fwd_bwd(mean_singular_value, e), _fwd_bwd(svd_mean_singular_value, e)
    ours_value, ref_value = float(ours()), float(ref())
    med = interleaved({
        "ours": timed(ours), "svd": timed(ref),
        "variance": timed(_fwd_bwd(variance_term, e, e2)),
        "covariance": timed(_fwd_bwd(covariance_term, e, e2)),
        "near_ours": timed(_fwd_bwd(mean_singular_value, near)),
        "near_svd": timed(_fwd_bwd(svd_mean_singular_value, near)),
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


# --- 2. and 3. pretraining on the CPU ---------------------------------------------------------


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
        "loss": timed(_fwd_bwd(lambda a, b: ssl_loss(a, b, {}, {}, cfg.objective)[0], z1, z2)),
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


# --- 4. GPU ------------------------------------------------------------------------------------


def gpu_setting(profile: str, steps: int, repeats: int, gen: torch.Generator, device: str = "cuda",
                extra: list[str] | None = None) -> dict[str, Any] | str:
    """fp32 against bf16 autocast pretraining steps (augmentation on the GPU included) for a
    profile at its per-GPU batch, or "not available". ``device`` and ``extra`` overrides let
    the tests run it small on a CPU."""
    from embreg.pretrain import train_step

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


# --- the whole bench ---------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment(quick: bool, repeats: int) -> dict[str, Any]:
    return {
        "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git_revision": git_revision(REPO_ROOT), "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(), "cpu": cpu_model(), "python": platform.python_version(),
        "quick": quick, "repeats": repeats, "warmup": 1,
    }


def targets(res: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every target with its measured value; ``met`` is exactly value <op> target."""
    out = {}
    for row, (_, _, speedup) in zip(res["svmax"], res["sizes"], strict=True):
        size = f"{row['b']}x{row['d']}"
        out[f"svmax_agreement_{size}"] = target(row["rel_diff"], AGREEMENT_TOL, "<=")
        out[f"svmax_speedup_{size}"] = target(row["speedup"], speedup, ">=")
    r1 = res["svmax_rank_one"]
    out[f"svmax_rank_one_grad_finite_{r1['b']}x{r1['d']}"] = target(r1["grad_finite"], True, "==")
    out["pretrain_throughput_ratio"] = target(res["throughput"]["ratio"], THROUGHPUT_TARGET, ">=")
    for row in res["layers"]:
        out[f"layers_ratio_{row['all']}_vs_{row['last']}"] = target(row["ratio"], LAYERS_TARGET, "<=")
    return out


def run_bench(out: str | Path = "results/bench", quick: bool = False, repeats: int | None = None,
              threads: int | None = None) -> dict[str, Any]:
    """Run every measurement, write bench.json and BENCH.md under ``out``; returns the results.

    ``threads``: torch intra-op threads for the run (restored afterwards); None keeps torch's
    default, the machine's."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run_bench(Path(out), quick, repeats or (1 if quick else 5))
    finally:
        torch.set_num_threads(before)


def _run_bench(out: Path, quick: bool, repeats: int) -> dict[str, Any]:
    """The measurements in order (the slowest, GPU, last), then the two files."""
    sizes = QUICK_SIZES if quick else FULL_SIZES
    batch, steps, extra = (4, 2, QUICK_OVERRIDES) if quick else (64, 4, [])
    gen = torch.Generator().manual_seed(0)
    res: dict[str, Any] = {"environment": environment(quick, repeats), "sizes": sizes, "overrides": extra}
    res["svmax"] = [svmax_case(b, d, repeats, gen) for b, d, _ in sizes]
    res["svmax_rank_one"] = rank_one_case(*sizes[0][:2], gen)
    res["throughput"] = throughput(batch, steps, extra, repeats, gen)
    res["layers"] = [layer_pair(last, all_, batch, steps, extra, repeats, gen) for last, all_ in LAYER_PAIRS]
    res["gpu"] = gpu_part(repeats, gen)
    res["targets"] = targets(res)
    write_json(out / "bench.json", res)
    write_text(out / "BENCH.md", render_markdown(res))
    log(f"wrote {out / 'bench.json'} and {out / 'BENCH.md'}")
    return res


# --- report ------------------------------------------------------------------------------------


def _fmt(x: Any) -> str:
    if isinstance(x, bool):
        return str(x).lower()
    if isinstance(x, float):
        return f"{x:.3g}" if abs(x) < 1e-2 or abs(x) >= 1e4 else f"{x:.3f}"
    return str(x)


def render_markdown(res: dict[str, Any]) -> str:
    """BENCH.md: the environment, one table per measurement, one line per target."""
    env, tp = res["environment"], res["throughput"]
    svmax = tabulate(
        [[f"{r['b']}x{r['d']}", r["precision"], r["ours_ms"], r["svd_ms"], r["speedup"], r["ours_value"],
          r["svd_value"], r["rel_diff"], r["variance_ms"], r["covariance_ms"]] for r in res["svmax"]],
        headers=["b x d", "SVMax path", "SVMax ms", "svd ms", "speed-up", "SVMax value", "svd value",
                 "rel diff", "variance ms", "covariance ms"], tablefmt="github", floatfmt=".4g")
    near = tabulate(
        [[f"{r['b']}x{r['d']}", r["near_precision"], r["near_ours_ms"], r["near_svd_ms"], r["near_speedup"]]
         for r in res["svmax"]],
        headers=["b x d", "SVMax path", "SVMax ms", "svd ms", "speed-up"], tablefmt="github", floatfmt=".4g")
    layers = tabulate(
        [[r["all"], r["last"], r["all_ms_per_step"], r["last_ms_per_step"], r["ratio"]] for r in res["layers"]],
        headers=["all-layer", "last-layer", "all ms/step", "last ms/step", "ratio"], tablefmt="github",
        floatfmt=".4g")
    gap = tp["pretrain_ms_per_step"] - tp["bare_ms_per_step"]
    r1 = res["svmax_rank_one"]
    lines = [
        "# Benchmark", "",
        f"{env['timestamp']}, git {env['git_revision']}, torch {env['torch']} "
        f"({env['torch_threads']} threads), CPU: {env['cpu']}. Medians of {env['repeats']} repeats "
        f"after {env['warmup']} warm-up round; the two sides of each ratio were measured interleaved."
        + (f" **Quick mode: tiny sizes, batch {tp['batch']}, overrides {res['overrides']}, for tests "
           "only; the targets are meant for a full run.**" if env["quick"] else ""), "",
        "## Targets", "",
        *[f"- {name}: {_fmt(t['value'])} (target {t['op']} {_fmt(t['target'])}): "
          f"{'met' if t['met'] else '**NOT met**'}" for name, t in res["targets"].items()], "",
        "## SVMax and VICReg terms (forward+backward, float32, CPU)", "",
        "SVMax is `mean_singular_value`; svd is `torch.svd(F.normalize(e, dim=1))[1].mean()`; "
        "speed-up = svd time / SVMax time. The variance and covariance terms are VICReg's, on two "
        "views of the same size. SVMax path: SVMax decomposes the k x k Gram matrix in float32 when "
        "its smallest eigenvalue is at least 1e-3 of the largest (a rectangular random matrix, a "
        "healthy embedding), in float64 otherwise (a square random matrix has singular values "
        "near 0, which a float32 Gram matrix misses by percents).", "", svmax, "",
        "The same on a nearly collapsed embedding (one direction plus 1e-2 noise), which always "
        "takes the float64 path:", "", near, "",
        f"Rank-one (collapsed) {r1['b']}x{r1['d']} embedding: SVMax {_fmt(r1['value'])}, "
        f"gradient finite: {_fmt(r1['grad_finite'])}.", "",
        f"## Pretraining throughput (default profile, VICReg, CPU, batch {tp['batch']})", "",
        tabulate([["pretrain", tp["pretrain_images_per_sec"], tp["pretrain_ms_per_step"]],
                  ["bare model", tp["bare_images_per_sec"], tp["bare_ms_per_step"]]],
                 headers=["", "images/s", "ms/step"], tablefmt="github", floatfmt=".4g"), "",
        f"Ratio (pretrain / bare images/s): {_fmt(tp['ratio'])}. The bare model does the same "
        "forward+backward+AdamW step on two ready views with loss = sum of outputs. The gap "
        f"({gap:.0f} ms/step) is pretrain's extra work: two augmented views (crop/flip/jitter, "
        f"{tp['augment_ms']:.1f} ms alone), the objective's forward+backward (invariance, variance, "
        f"covariance, plus the logged-only SVMax; {tp['loss_ms']:.1f} ms alone), and per-step "
        "bookkeeping (batch indexing, learning-rate update, loss-to-float sync).", "",
        "## All-layer against last-layer regularization (default profile, CPU)", "", layers, "",
        "## GPU", "", _gpu_markdown(res["gpu"]), "",
    ]
    return "\n".join(lines)


def _gpu_markdown(gpu: dict[str, Any] | str) -> str:
    if isinstance(gpu, str):
        return gpu + "."
    rows = []
    for profile in GPU_PROFILES:
        part = gpu[profile]
        if isinstance(part, str):
            rows.append([profile, part, "", "", ""])
        else:
            rows += [[profile, p, part["batch"], part[p]["images_per_sec"], part[p]["peak_memory_mb"]]
                     for p in ("fp32", "bf16")]
    return f"{gpu['device']}\n\n" + tabulate(
        rows, headers=["profile", "precision", "batch", "images/s", "peak MiB"], tablefmt="github", floatfmt=".4g")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="embreg bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="results/bench", help="directory for bench.json and BENCH.md")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and repeats (for tests)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement "
                        "(default 5, quick 1)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's own, the machine's cores)")
    args = parser.parse_args(argv)
    for name in ("repeats", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    run_bench(args.out, args.quick, args.repeats, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
