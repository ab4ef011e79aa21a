"""BENCH.md from the benchmark's results."""

from __future__ import annotations

from typing import Any

from tabulate import tabulate

from embreg.bench.mfu import markdown as mfu_markdown
from embreg.bench.training import GPU_PROFILES


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
        mfu_markdown(res["mfu"]), "",
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
