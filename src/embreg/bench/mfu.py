"""`python -m embreg.bench.mfu`: pretraining's model FLOPs utilisation (MFU) on this machine's CPU.

MFU = achieved FLOP/s of a training step / this machine's float32 matmul peak, at 1 and 2
torch threads. Measured here, in one process, the repeats of every competitor interleaved
round by round (the machine may be shared; medians):

1. the peak: large square float32 matmuls (sgemm), GFLOP/s;
2. the FLOPs of one step, counted by ``torch.utils.flop_counter.FlopCounterMode``: the default
   profile's training step as the library runs it (``bench.steps.library_step``:
   ``pretrain.train_step`` on two augmented views, VICReg, + backward) and the bare reference's
   forward+backward on two ready views (``bench.steps.bare_step``: torchvision ResNet + the
   same projector, built by the bench);
3. the time of those steps with the run's optimizer (``optim.build_optimizer``: AdamW, fused):
   ``pretrain`` (the library's step), ``bare`` (channels_last, the library default),
   ``bare_nchw`` (the same, contiguous) and ``bare_fused`` (``bare`` with an
   ``AdamW(fused=True)`` built here: the library's own AdamW is the fused one now, so this row
   checks that; equal to float rounding).

The MFU figure has no target (the 50% one-thread target of the CPU was retired: a float32 step
on these small maps stays near 40% whatever the overhead); it is reported as measured.

Every time is taken on two clocks: wall (what a user waits for) and this process's CPU time
(all its threads; immune to other processes taking turns on the cores, not to their cache
traffic). ``mfu`` is wall-based; ``mfu_cpu`` divides FLOPs per CPU-second by the sgemm's FLOPs
per CPU-second at the same thread count, which on a shared machine is the steadier figure.

``jobs_throughput`` compares whole-machine throughput: N processes x T threads at once
(the sweep runs 2 jobs x 1 thread) against 1 process x 2 threads.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from embreg.bench import steps as bench_steps
from embreg.bench.steps import Step, bare_model, library_model, library_step, ready_views, synthetic_images
from embreg.config import RunConfig
from embreg.optim import build_optimizer
from embreg.params import compose_run


def default_config(batch: int = 64, channels_last: bool = True, objective: str = "vicreg") -> RunConfig:
    """The default profile's run (CPU) at ``batch`` images per step."""
    return compose_run("default", [f"objective={objective}", f"optim.batch_size={batch}", "profile.device=cpu",
                                   f"backbone.channels_last={str(channels_last).lower()}"])


def clocks() -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds over all its threads)."""
    return time.perf_counter(), time.process_time()


def sgemm_step(n: int = 2048) -> tuple[Step, int]:
    """One (n, n) @ (n, n) float32 matmul and its FLOPs (2 n^3)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    return (lambda: torch.mm(a, b, out=out)), 2 * n**3


def count_flops(fn: Step) -> int:
    """FLOPs of one call of ``fn`` (matmuls and convolutions, forward and backward)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def synthetic_batch(cfg: RunConfig, gen: torch.Generator) -> torch.Tensor:
    """(batch, c, h, w) uint8 images of the dataset's shape (timing needs no real data)."""
    return synthetic_images(cfg, cfg.optim.batch_size, gen)


def pretrain_step(cfg: RunConfig) -> tuple[Step, Step]:
    """The library's step (train_step on augmented views, the arm's objective, backward, the
    run's optimizer) and its forward+backward alone (for counting FLOPs)."""
    return library_step(cfg, library_model(cfg), synthetic_batch(cfg, torch.Generator().manual_seed(0)))


def bare_step(cfg: RunConfig, fused: bool = False) -> tuple[Step, Step]:
    """The bare reference on two ready views (loss = sum of outputs), backward, the run's
    optimizer (``fused``: an ``AdamW(fused=True)`` built here, same hyper-parameters); and its
    forward+backward alone."""
    model, gen = bare_model(cfg), torch.Generator().manual_seed(0)
    opt = build_optimizer(model, cfg.optim)
    if fused:
        groups = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in opt.param_groups]
        opt = torch.optim.AdamW(groups, lr=cfg.optim.lr, fused=True)
    return bench_steps.bare_step(cfg, model, ready_views(cfg, synthetic_batch(cfg, gen), gen), opt)


def interleaved(steps: dict[str, Step], threads: list[int], repeats: int, warmup: int = 1) -> dict[tuple[str, int], dict[str, float]]:
    """Median wall and CPU seconds of each step at each thread count, run round-robin so that
    drift in the machine's load hits all alike; the first ``warmup`` rounds are discarded."""
    times: dict[tuple[str, int], list[tuple[float, float]]] = {(n, t): [] for n in steps for t in threads}
    for r in range(warmup + repeats):
        for t in threads:
            torch.set_num_threads(t)
            for name, fn in steps.items():
                w0, c0 = clocks()
                fn()
                w1, c1 = clocks()
                if r >= warmup:
                    times[(name, t)].append((w1 - w0, c1 - c0))
    return {k: {"wall_s": statistics.median(w for w, _ in v), "cpu_s": statistics.median(c for _, c in v)}
            for k, v in times.items()}


def measure(threads: list[int], repeats: int = 5, batch: int = 64, sgemm_n: int = 2048) -> dict[str, Any]:
    """Peak, FLOPs and MFU of the default profile's pretraining step (see the module docstring)."""
    cfg, nchw = default_config(batch), default_config(batch, channels_last=False)
    sg, sg_flops = sgemm_step(sgemm_n)
    candidates = {"pretrain": pretrain_step(cfg), "bare": bare_step(cfg), "bare_nchw": bare_step(nchw),
                  "bare_fused": bare_step(cfg, fused=True)}
    torch.set_num_threads(threads[0])
    flops = {"sgemm": sg_flops, **{k: count_flops(fb) for k, (_, fb) in candidates.items()}}
    med = interleaved({"sgemm": sg, **{k: s for k, (s, _) in candidates.items()}}, threads, repeats)
    rows = []
    for t in threads:
        peak = med[("sgemm", t)]
        peak_wall, peak_cpu = sg_flops / peak["wall_s"], sg_flops / peak["cpu_s"]
        for name in candidates:
            m = med[(name, t)]
            rows.append({
                "step": name, "threads": t, "gflop": flops[name] / 1e9, "ms_wall": 1e3 * m["wall_s"],
                "ms_cpu": 1e3 * m["cpu_s"], "images_per_s": batch / m["wall_s"],
                "gflops_wall": flops[name] / m["wall_s"] / 1e9, "gflops_cpu": flops[name] / m["cpu_s"] / 1e9,
                "peak_gflops_wall": peak_wall / 1e9, "peak_gflops_cpu": peak_cpu / 1e9,
                "mfu": flops[name] / m["wall_s"] / peak_wall, "mfu_cpu": flops[name] / m["cpu_s"] / peak_cpu,
            })
    return {
        "batch": batch, "repeats": repeats, "sgemm_n": sgemm_n, "torch": torch.__version__,
        "load_average": os.getloadavg(), "cpus": os.cpu_count(),
        "mflop_per_image_per_view": flops["bare"] / 2 / batch / 1e6,
        "flops": flops, "rows": rows,
    }


def _worker(threads: int, steps: int, start_at: float, batch: int) -> None:
    """One process of ``jobs_throughput``: waits for the common start, then times bare steps."""
    torch.set_num_threads(threads)
    step, _ = bare_step(default_config(batch))
    step()  # warm-up (allocator, oneDNN primitive cache)
    time.sleep(max(0.0, start_at - time.time()))
    t0 = time.time()
    for _ in range(steps):
        step()
    print(json.dumps({"t0": t0, "t1": time.time(), "images": steps * batch}))


def jobs_throughput(jobs: int, threads: int, steps: int = 5, batch: int = 64, delay_s: float = 30.0) -> dict[str, float]:
    """Images/s of the whole machine with ``jobs`` processes of ``threads`` threads each running
    bare steps at the same time (from a common start, after each one's warm-up)."""
    start_at = time.time() + delay_s  # time to import torch and warm up in every process
    cmd = [sys.executable, "-m", "embreg.bench.mfu", "--worker", str(threads), str(steps), str(start_at), str(batch)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(jobs)]
    outs = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    if any(o["t0"] > start_at + 1.0 for o in outs):
        raise RuntimeError(f"a worker missed the common start by > 1 s: raise delay_s (now {delay_s})")
    span = max(o["t1"] for o in outs) - min(o["t0"] for o in outs)
    return {"jobs": jobs, "threads": threads, "images_per_s": sum(o["images"] for o in outs) / span}


def markdown(res: dict[str, Any]) -> str:
    """The result as a Markdown section: one row per step and thread count."""
    from tabulate import tabulate

    rows = [[r["step"], r["threads"], f"{r['gflop']:.2f}", f"{r['ms_wall']:.0f}", f"{r['ms_cpu']:.0f}",
             f"{r['gflops_wall']:.1f}", f"{r['peak_gflops_wall']:.1f}", f"{100 * r['mfu']:.1f}",
             f"{r['gflops_cpu']:.1f}", f"{r['peak_gflops_cpu']:.1f}", f"{100 * r['mfu_cpu']:.1f}"] for r in res["rows"]]
    head = ["step", "threads", "GFLOP", "ms wall", "ms CPU", "GFLOP/s", "sgemm GFLOP/s", "MFU %",
            "GFLOP/CPU-s", "sgemm GFLOP/CPU-s", "MFU (CPU) %"]
    text = (f"## Pretraining MFU (default profile, CPU, batch {res['batch']})\n\n"
            f"{res['mflop_per_image_per_view']:.1f} MFLOP per image per view, forward + backward "
            f"(FlopCounterMode). sgemm: {res['sgemm_n']}x{res['sgemm_n']} float32 matmuls. Medians of "
            f"{res['repeats']} interleaved repeats; load average at the start "
            f"{', '.join(f'{v:.1f}' for v in res['load_average'])} on {res['cpus']} CPUs.\n\n"
            + tabulate(rows, headers=head, tablefmt="github"))
    if res.get("jobs"):
        jrows = [[j["jobs"], j["threads"], f"{j['images_per_s']:.1f}"] for j in res["jobs"]]
        text += "\n\nWhole-machine throughput, bare steps:\n\n" + tabulate(
            jrows, headers=["jobs", "threads each", "images/s"], tablefmt="github")
    return text + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        _worker(int(argv[1]), int(argv[2]), float(argv[3]), int(argv[4]))
        return 0
    ap = argparse.ArgumentParser(prog="python -m embreg.bench.mfu", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="write the result as JSON here")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--jobs", action="store_true", help="also 2 jobs x 1 thread against 1 job x 2 threads")
    args = ap.parse_args(argv)
    if min(args.threads) < 1 or args.repeats < 1 or args.batch < 2:
        ap.error("--threads must be >= 1, --repeats >= 1, --batch >= 2")
    res = measure(args.threads, args.repeats, args.batch)
    if args.jobs:
        res["jobs"] = [jobs_throughput(2, 1, batch=args.batch), jobs_throughput(1, 2, batch=args.batch)]
    print(markdown(res))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
