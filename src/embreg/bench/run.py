"""`embreg bench`: speed of SVMax and the VICReg terms, and of the training step.

Measures (all ratios in one run, since the machine is shared and noisy):

1. SVMax forward+backward (``mean_singular_value``) against a plain ``torch.svd`` reference,
   with their values, a rank-one gradient check, and the variance / covariance terms' times;
2. the library's training step (``pretrain.train_step`` + the run's optimizer, ``bench.steps``)
   of the default profile against the bare reference's step;
3. the step time of all-layer against last-layer regularization;
4. the step's MFU: FLOPs per step (FlopCounterMode) over this machine's float32 sgemm peak,
   at one and two threads (``embreg.bench.mfu``; a figure, no target);
5. on a GPU (``embreg.bench.gpu``): the step against the bare reference, the real loop against
   the step, bf16 against fp32, SVMax's arm against VICReg's, SVMax against ``svdvals``, host
   syncs per step; and, from a finished GPU run (``--gpu-run-dir``), evaluation's share of it.

Every number is a median over ``--repeats`` measurements after a warm-up, the competitors of a
ratio interleaved round by round. Results: ``<out>/bench.json`` and ``<out>/BENCH.md``, each
target with its value and whether it is met (or why it was not measured). ``--gpu-only`` runs
part 5 alone, rewriting both files after each of its parts (the GPU check's time limit may
stop it); ``--device cpu`` runs part 5's code on the CPU (with ``--quick``: tiny, for tests).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from embreg.bench import mfu
from embreg.bench.gpu import NO_GPU, QUICK, GpuSizes, gpu_section
from embreg.bench.report import render_markdown
from embreg.bench.targets import cpu_targets, eval_fraction, gpu_targets
from embreg.bench.terms import FULL_SIZES, QUICK_SIZES, rank_one_case, svmax_case
from embreg.bench.timing import environment, log
from embreg.bench.training import layer_pair, throughput
from embreg.io import write_json, write_text

QUICK_OVERRIDES = ["backbone.projector=[64,64]"]  # quick mode: a small projector on the same backbone
LAYER_PAIRS = [("vicreg", "vicreg_all"), ("svmax", "svmax_all")]


def targets(res: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every target of the parts that ran: the CPU ones (when they ran) and the GPU ones (always:
    measured, or not measured and why)."""
    out = cpu_targets(res) if "svmax" in res else {}
    shapes = [(b, d) for b, d, _ in res["sizes"]]
    return out | gpu_targets(res.get("gpu", NO_GPU), res.get("gpu_eval", "not run"), shapes)


def gpu_device(device: str | None) -> str | None:
    """The device the GPU part runs on: ``device`` when given, else CUDA when there is one."""
    return device or ("cuda" if torch.cuda.is_available() else None)


def run_bench(out: str | Path = "results/bench", quick: bool = False, repeats: int | None = None,
              threads: int | None = None, gpu_only: bool = False, device: str | None = None,
              gpu_run_dir: str | Path | None = None) -> dict[str, Any]:
    """Run every measurement, write bench.json and BENCH.md under ``out``; returns the results.

    ``threads``: torch intra-op threads for the run (restored afterwards); None keeps torch's
    default, the machine's. ``gpu_only``: part 5 alone; ``device``: where part 5 runs (default
    CUDA if present, else it is not measured); ``gpu_run_dir``: a finished GPU run (or a
    profile's results) whose metrics.json files give evaluation's share of the wall time."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run_bench(Path(out), quick, repeats or (1 if quick else 5), gpu_only, device, gpu_run_dir)
    finally:
        torch.set_num_threads(before)


def _write(out: Path, res: dict[str, Any]) -> None:
    res["targets"] = targets(res)
    write_json(out / "bench.json", res)
    write_text(out / "BENCH.md", render_markdown(res))


def _run_bench(out: Path, quick: bool, repeats: int, gpu_only: bool, device: str | None,
               gpu_run_dir: str | Path | None) -> dict[str, Any]:
    """The measurements in order (the slowest, GPU, last), then the two files."""
    sizes = QUICK_SIZES if quick else FULL_SIZES
    batch, steps, extra = (4, 2, QUICK_OVERRIDES) if quick else (64, 4, [])
    gen = torch.Generator().manual_seed(0)
    res: dict[str, Any] = {"environment": environment(quick, repeats), "sizes": sizes, "overrides": extra}
    if not gpu_only:
        res["svmax"] = [svmax_case(b, d, repeats, gen) for b, d, _ in sizes]
        res["svmax_rank_one"] = rank_one_case(*sizes[0][:2], gen)
        res["throughput"] = throughput(batch, steps, extra, repeats, gen)
        res["layers"] = [layer_pair(last, all_, batch, steps, extra, repeats, gen) for last, all_ in LAYER_PAIRS]
        res["mfu"] = mfu.measure([1, 2], repeats, batch=batch, sgemm_n=256 if quick else 2048)
    res["gpu_eval"] = eval_fraction(gpu_run_dir)
    dev = gpu_device(device)
    if dev is None:
        log(f"gpu: {NO_GPU}")
        res["gpu"] = NO_GPU
    else:
        gpu_sizes = QUICK if quick else GpuSizes()

        def on_part(gpu: dict[str, Any]) -> None:  # each GPU part on disk as soon as it ends
            res["gpu"] = gpu
            _write(out, res)

        res["gpu"] = gpu_section(gpu_sizes, repeats, gen, dev, on_part)
    _write(out, res)
    log(f"wrote {out / 'bench.json'} and {out / 'BENCH.md'}")
    return res


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="embreg bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="results/bench", help="directory for bench.json and BENCH.md")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and repeats (for tests)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement "
                        "(default 5, quick 1)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's own, the machine's cores)")
    parser.add_argument("--gpu-only", action="store_true", help="only the GPU part (and --gpu-run-dir's figure)")
    parser.add_argument("--device", default=None, help="the GPU part's device (default: cuda when present; "
                        "cpu runs its code on the CPU, tiny with --quick)")
    parser.add_argument("--gpu-run-dir", default=None, help="a finished GPU run, or a profile's results: "
                        "evaluation's share of its wall time from its metrics.json files")
    args = parser.parse_args(argv)
    for name in ("repeats", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    run_bench(args.out, args.quick, args.repeats, args.threads, args.gpu_only, args.device, args.gpu_run_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
