"""BENCH.md from the benchmark's results."""

from __future__ import annotations

from typing import Any

from tabulate import tabulate

from embreg.bench.gpureport import gpu_markdown
from embreg.bench.mfu import markdown as mfu_markdown


def _fmt(x: Any) -> str:
    if isinstance(x, bool):
        return str(x).lower()
    if isinstance(x, float):
        return f"{x:.3g}" if abs(x) < 1e-2 or abs(x) >= 1e4 else f"{x:.3f}"
    return str(x)


def target_line(name: str, t: dict[str, Any]) -> str:
    """One line per target, ending in its verdict: met, **NOT met**, or not measured (why)."""
    verdict = f"not measured ({t['reason']})" if t["met"] is None else "met" if t["met"] else "**NOT met**"
    value = "-" if t["value"] is None else _fmt(t["value"])
    return f"- {name}: {value} (target {t['op']} {_fmt(t['target'])}): {verdict}"


def _mfu_figure(res: dict[str, Any]) -> list[str]:
    rows = [r for r in res["mfu"]["rows"] if r["step"] == "pretrain" and r["threads"] == 1]
    return [f"Without a target: the training step's MFU at one thread, {100 * rows[0]['mfu']:.1f}% "
            "(the CPU's 50% target was retired; see the MFU section)."] if rows else []


def render_markdown(res: dict[str, Any]) -> str:
    """BENCH.md: the environment, one line per target, one table per measurement."""
    env = res["environment"]
    cpu = "svmax" in res
    lines = [
        "# Benchmark", "",
        f"{env['timestamp']}, git {env['git_revision']}, torch {env['torch']} "
        f"({env['torch_threads']} threads), CPU: {env['cpu']}, GPU: {env.get('cuda_device') or 'none'}. "
        f"Medians of {env['repeats']} repeats after {env['warmup']} warm-up round; the two sides of each "
        "ratio were measured interleaved."
        + (f" **Quick mode: tiny sizes, overrides {res['overrides']}, for tests only; the targets are "
           "meant for a full run.**" if env["quick"] else "")
        + ("" if cpu else " GPU part only (`--gpu-only`)."), "",
        "## Targets", "",
        *[target_line(name, t) for name, t in res["targets"].items()], "",
        *(_mfu_figure(res) + [""] if cpu else []),
        *(_cpu_sections(res) if cpu else []),
        "## GPU", "", gpu_markdown(res.get("gpu", "not run"), res.get("gpu_eval", "not measured")), "",
    ]
    return "\n".join(lines)


def _cpu_sections(res: dict[str, Any]) -> list[str]:
    tp, r1 = res["throughput"], res["svmax_rank_one"]
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
    return [
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
        f"## Training step throughput (default profile, VICReg, CPU, batch {tp['batch']})", "",
        tabulate([["train_step + optimizer", tp["pretrain_images_per_sec"], tp["pretrain_ms_per_step"]],
                  ["bare reference", tp["bare_images_per_sec"], tp["bare_ms_per_step"]]],
                 headers=["", "images/s", "ms/step"], tablefmt="github", floatfmt=".4g"), "",
        f"Ratio (library step / bare images/s): {_fmt(tp['ratio'])}. The library's step is "
        "`pretrain.train_step` with the run's optimizer (`optim.build_optimizer`), in `pretrain`'s "
        "order; the bare reference is a torchvision ResNet with the same stem and projector, built "
        "by the bench, doing forward+backward+the same optimizer on two ready views with loss = sum "
        f"of outputs. The gap ({gap:.0f} ms/step) is the library's extra work: two augmented views "
        f"(crop/flip/jitter, {tp['augment_ms']:.1f} ms alone) and the objective's forward+backward "
        f"(invariance, variance, covariance, plus the logged-only SVMax; {tp['loss_ms']:.1f} ms alone, "
        f"{tp['loss_unmonitored_ms']:.1f} ms without the logged-only terms, so they cost "
        f"{tp['monitor_ms']:.1f} ms on a step where `pretrain.monitor_every` falls: every step on the "
        "CPU profiles, one in 25 on `fmnist_gpu`).", "",
        "## All-layer against last-layer regularization (default profile, CPU, library step)", "", layers, "",
        mfu_markdown(res["mfu"]), "",
    ]
