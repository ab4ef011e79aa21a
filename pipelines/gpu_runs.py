"""The GPU check's steps that need embreg (``pipelines/gpu_check.py`` runs them as commands, each
printing one JSON object on its last line):

    python pipelines/gpu_runs.py prepare --profile fmnist_gpu --mirror DIR [--data DIR]
    python pipelines/gpu_runs.py summarize --results DIR --walls JSON
    python pipelines/gpu_runs.py grid --profile fmnist_gpu [--data DIR] --runs JSON [--concurrency N]

``prepare``: the profile's dataset from local raw files (``embreg.data.prepare``, the prepare
stage's own code). ``summarize``: each finished run under ``--results`` (metrics.json and
status.json) with the wall time its process took. ``grid``: the time the profile's whole grid
(the sweep's plan) would take, extrapolated from those runs (see ``grid_estimate``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from statistics import mean
from typing import Any

from _offline import description

KEEP = ("arm", "seed", "steps", "sec_per_step", "pretrain_seconds", "eval_seconds", "peak_memory_mb", "linear_top1",
        "linear_top5", "knn20_top1")


def prepare_data(profile: str, mirror: str, data: str) -> dict[str, Any]:
    from embreg.data.prepare import prepare
    from embreg.params import compose_run

    cfg = compose_run(profile)
    card = prepare(data, cfg.dataset, mirror)
    return {"dataset": cfg.dataset.name, "data": data, "train": card["splits"]["train"]["size"],
            "test": card["splits"]["test"]["size"]}


def summarize(results: Path, walls: dict[str, float]) -> list[dict[str, Any]]:
    """One row per run directory under ``results`` that has a status.json: its state, the
    kept metrics, the semi-supervised top-1 cells, and ``wall_s`` (its process's wall time,
    from ``walls`` by arm)."""
    rows = []
    for status_path in sorted(results.rglob("status.json")):
        status = json.loads(status_path.read_text())
        metrics_path = status_path.with_name("metrics.json")
        m = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
        row = {"run": str(status_path.parent.relative_to(results)), "arm": status.get("arm"), "state": status.get("state"),
               "error": status.get("error"), **{k: m[k] for k in KEEP if k in m}}
        row |= {k: v for k, v in m.items() if "pct" in k and k.endswith("top1")}  # 1% / 10% fine-tuning cells
        if m.get("images_per_sec") and m.get("sec_per_step"):
            row["batch"] = round(m["images_per_sec"] * m["sec_per_step"])
        row["wall_s"] = walls.get(str(row["arm"]))
        rows.append(row)
    return rows


def grid_estimate(profile: str, data: str, runs: list[dict[str, Any]], concurrency: int) -> dict[str, Any]:
    """Seconds the profile's whole grid would take on this GPU, ``concurrency`` runs at a time
    (as the measured runs shared it). Each planned run costs the measured start-up (process wall
    time less pretraining and evaluation), its own pretraining steps (epochs x steps per epoch,
    the supervised reference's epochs included; none for raw pixels and random init) at the
    measured seconds per step (pretraining seconds over steps: checkpoints included) scaled by
    its batch, and the measured evaluation time. The sum over the plan, over ``concurrency``;
    ``eval_fraction``: evaluation over pretraining + evaluation. A model, not a measurement:
    quote a timed grid."""
    from embreg.params import load_params
    from embreg.pretrain import epochs
    from embreg.sweep.plan import make_plan

    done = [r for r in runs if r.get("pretrain_seconds") and r.get("steps")]
    if not done:
        raise ValueError("no finished run to extrapolate from")
    batch0 = done[0].get("batch") or 256
    sec_step = mean(r["pretrain_seconds"] / r["steps"] for r in done)
    per_epoch_steps = mean(r["steps"] for r in done)  # one epoch each (pretrain.epochs=1)
    eval_s = mean(r.get("eval_seconds") or 0.0 for r in done)
    startup = mean(max(0.0, (r.get("wall_s") or 0.0) - r["pretrain_seconds"] - (r.get("eval_seconds") or 0.0))
                   for r in done)
    params = dataclasses.replace(load_params(), profile=profile, overrides=[], data_dir=data)
    plan = make_plan(params)
    total_pre, n = 0.0, len(plan.configs)
    for cfg in plan.configs.values():
        if cfg.objective.kind not in ("pixels", "untrained"):
            spe = cfg.pretrain.steps_per_epoch or per_epoch_steps * batch0 / cfg.optim.batch_size
            total_pre += epochs(cfg) * spe * sec_step * cfg.optim.batch_size / batch0
    total_eval = n * eval_s
    return {"profile": profile, "runs": n, "concurrency": concurrency, "measured_runs": len(done),
            "sec_per_step": sec_step, "eval_s_per_run": eval_s, "startup_s_per_run": startup,
            "pretrain_s": total_pre, "eval_s": total_eval, "startup_s": n * startup,
            "grid_s": (total_pre + total_eval + n * startup) / concurrency,
            "eval_fraction": total_eval / (total_pre + total_eval) if total_pre + total_eval else None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="gpu_runs.py", description=description(__doc__))
    ap.add_argument("what", choices=["prepare", "summarize", "grid"])
    ap.add_argument("--profile", default="fmnist_gpu")
    ap.add_argument("--mirror")
    ap.add_argument("--data", help="the prepared data's folder (default: params.yaml's data.dir, as the sweep reads it)")
    ap.add_argument("--results", type=Path)
    ap.add_argument("--walls", default="{}", help="JSON: arm -> wall seconds of its process")
    ap.add_argument("--runs", type=Path, help="a JSON file: the rows of `summarize`")
    ap.add_argument("--concurrency", type=int, default=2)
    a = ap.parse_args(argv)
    if a.data is None:
        from embreg.params import load_params

        a.data = load_params().data_dir
    if a.what == "prepare":
        out: Any = prepare_data(a.profile, a.mirror, a.data)
    elif a.what == "summarize":
        out = summarize(a.results, json.loads(a.walls))
    else:
        out = grid_estimate(a.profile, a.data, json.loads(a.runs.read_text()), a.concurrency)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _common  # noqa: F401 - compose from this checkout's conf/ ($EMBREG_CONF)

    sys.exit(main())
