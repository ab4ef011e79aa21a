"""The benchmark's targets: each with its measured value, or, where this run could not measure it
(no GPU, no finished GPU run to read, a part that failed), ``met`` None and the reason."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from embreg.bench.gpu import GPU_PROFILES, STEP_PROFILE
from embreg.bench.terms import PARITY
from embreg.bench.timing import not_measured, target

AGREEMENT_TOL = 1e-4  # relative difference of SVMax against the svd reference
THROUGHPUT_TARGET = 0.85  # the library's step images/s over the bare reference's (CPU)
LAYERS_TARGET = 1.25  # all-layer step time over last-layer
# name: (goal, op). bf16 / fp32: images/s; step / bare and loop / step: images/s; SVMax / VICReg
# arm: step time; eval fraction: evaluation seconds over pretraining + evaluation seconds of the
# runs of a finished GPU grid; syncs: host syncs per step of the real loop, the worse SSL arm.
GPU_TARGETS: dict[str, tuple[float, str]] = {
    "gpu_step_over_bare": (0.8, ">="),
    "gpu_loop_over_step": (0.9, ">="),
    **{f"gpu_bf16_over_fp32_{p}": (1.3, ">=") for p in GPU_PROFILES},
    "gpu_svmax_over_vicreg_step": (1.1, "<="),
    "gpu_eval_fraction": (0.15, "<="),
    "gpu_syncs_per_step": (2.0, "<="),
}
SVD_RECT_TARGET = 2.0  # SVMax over svdvals on a GPU where b != d; square shapes: PARITY


def cpu_targets(res: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The CPU measurements' targets (the MFU figure has none: reported as measured)."""
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


def _part(gpu: dict[str, Any] | str, name: str) -> dict[str, Any] | list | str:
    """A GPU part's result, or why there is none."""
    if isinstance(gpu, str):
        return gpu
    return gpu.get(name, "the GPU part stopped before it")


def _ratio(part: Any, num: tuple[str, str], den: tuple[str, str]) -> float | str:
    if isinstance(part, str):
        return part
    return part[num[0]][num[1]] / part[den[0]][den[1]]


def gpu_values(gpu: dict[str, Any] | str, shapes: list[tuple[int, int]]) -> dict[str, float | str]:
    """Each GPU target's value, or the reason it was not measured."""
    step, loop, syncs, svd = (_part(gpu, n) for n in (STEP_PROFILE, "loop", "syncs", "svd"))
    out: dict[str, float | str] = {
        "gpu_step_over_bare": _ratio(step, ("bf16", "images_per_sec"), ("bf16", "bare_images_per_sec")),
        "gpu_loop_over_step": loop if isinstance(loop, str) else loop["ratio"],
        **{f"gpu_bf16_over_fp32_{p}": _ratio(_part(gpu, p), ("bf16", "images_per_sec"), ("fp32", "images_per_sec"))
           for p in GPU_PROFILES},
        "gpu_svmax_over_vicreg_step": _ratio(step, ("svmax", "ms_per_step"), ("bf16", "ms_per_step")),
        "gpu_syncs_per_step": syncs if isinstance(syncs, str) else syncs["per_step"],
    }
    rows = {} if isinstance(svd, str) else {(r["b"], r["d"]): r["speedup"] for r in svd}
    for b, d in shapes:
        out[f"gpu_svmax_over_svdvals_{b}x{d}"] = svd if isinstance(svd, str) else rows[(b, d)]
    return out


def gpu_targets(gpu: dict[str, Any] | str, eval_part: dict[str, Any] | str,
                shapes: list[tuple[int, int]]) -> dict[str, dict[str, Any]]:
    """Every GPU target: measured, or not measured with the reason (``NO_GPU`` on a CPU)."""
    goals = dict(GPU_TARGETS)
    goals |= {f"gpu_svmax_over_svdvals_{b}x{d}": (PARITY if b == d else SVD_RECT_TARGET, ">=") for b, d in shapes}
    values = gpu_values(gpu, shapes)
    values["gpu_eval_fraction"] = eval_part if isinstance(eval_part, str) else eval_part["fraction"]
    out = {}
    for name, (goal, op) in goals.items():
        v = values[name]
        out[name] = not_measured(goal, op, v) if isinstance(v, str) else target(v, goal, op)
    return out


def eval_fraction(run_dir: str | Path | None) -> dict[str, Any] | str:
    """Evaluation's share of the GPU runs under ``run_dir`` (one run's directory, or a profile's
    results holding many): sum of eval_seconds over sum of pretrain_seconds + eval_seconds, from
    each run's metrics.json, the runs whose config.yaml says a CUDA device; or why not."""
    if run_dir is None:
        return "needs a finished GPU run: --gpu-run-dir"
    rows = []
    for path in sorted(Path(run_dir).rglob("metrics.json")):
        cfg_path = path.with_name("config.yaml")
        cfg = yaml.safe_load(cfg_path.read_text()) if cfg_path.is_file() else {}
        device = str(((cfg or {}).get("profile") or {}).get("device", ""))
        if device.startswith("cuda"):
            m = json.loads(path.read_text())
            rows.append((m.get("pretrain_seconds") or 0.0, m.get("eval_seconds") or 0.0))
    if not rows:
        return f"no GPU run's metrics.json under {run_dir}"
    pre, ev = sum(r[0] for r in rows), sum(r[1] for r in rows)
    return {"run_dir": str(run_dir), "runs": len(rows), "pretrain_seconds": pre, "eval_seconds": ev,
            "fraction": ev / (pre + ev) if pre + ev > 0 else 0.0}

