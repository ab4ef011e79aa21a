"""`embreg bench`: speed of SVMax and the VICReg terms, and pretraining throughput.

Measures (all ratios in one run, since the machine is shared and noisy):

1. SVMax forward+backward (``mean_singular_value``) against a plain ``torch.svd`` reference,
   with their values, a rank-one gradient check, and the variance / covariance terms' times;
2. pretraining throughput of the default profile against the bare model's forward+backward;
3. the step time of all-layer against last-layer regularization;
4. pretraining's MFU: FLOPs per step (FlopCounterMode) over this machine's float32 sgemm peak,
   at one and two threads (``embreg.bench.mfu``);
5. on a GPU: images/s and peak memory, fp32 against bf16 autocast.

Every number is a median over ``--repeats`` measurements after a warm-up, the competitors of a
ratio interleaved round by round. Results: ``<out>/bench.json`` and ``<out>/BENCH.md``, each
target with its value and whether it is met.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import sys
from pathlib import Path
from typing import Any

import torch

from embreg.bench import mfu
from embreg.bench.report import render_markdown
from embreg.bench.terms import rank_one_case, svmax_case
from embreg.bench.timing import log, target
from embreg.bench.training import gpu_part, layer_pair, throughput
from embreg.io import git_revision, write_json, write_text
from embreg.params import REPO_ROOT

# (b, d, speed-up target of SVMax over the svd reference). Square shapes take torch's SVD itself
# (regularizers.uses_svd: the Gram matrix gives no size reduction there), so their target is
# parity, "never slower", less 5% for timing noise between two runs of the same LAPACK call.
PARITY = 0.95
FULL_SIZES = [(256, 2048, 3.0), (512, 2048, 3.0), (2048, 2048, PARITY), (512, 8192, 3.0)]
QUICK_SIZES = [(32, 64, 3.0), (64, 64, PARITY)]
QUICK_OVERRIDES = ["backbone.projector=[64,64]"]  # quick mode: a small projector on the same backbone
AGREEMENT_TOL = 1e-4  # relative difference of SVMax against the svd reference
THROUGHPUT_TARGET = 0.85  # pretraining images/s over the bare model's
LAYERS_TARGET = 1.25  # all-layer step time over last-layer
MFU_TARGET = 0.5  # pretraining FLOP/s over this machine's float32 sgemm peak, one thread
LAYER_PAIRS = [("vicreg", "vicreg_all"), ("svmax", "svmax_all")]


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
    for row in res["mfu"]["rows"]:
        if row["step"] == "pretrain" and row["threads"] == 1:
            out["pretrain_mfu_1_thread"] = target(row["mfu"], MFU_TARGET, ">=")
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
    res["mfu"] = mfu.measure([1, 2], repeats, batch=batch, sgemm_n=256 if quick else 2048)
    res["gpu"] = gpu_part(repeats, gen)
    res["targets"] = targets(res)
    write_json(out / "bench.json", res)
    write_text(out / "BENCH.md", render_markdown(res))
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
    args = parser.parse_args(argv)
    for name in ("repeats", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    run_bench(args.out, args.quick, args.repeats, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
