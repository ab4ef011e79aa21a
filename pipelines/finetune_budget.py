"""Measure the semi-supervised fine-tuning budget a profile can afford: for ONE fixed pretrained
checkpoint, fine-tune it on each label subset at several budgets (epochs over the subset) and
several fine-tuning seeds, and report which budget makes the cell stop moving.

Criterion: a budget b is long enough when doubling it moves the cell's mean by less than the
95% confidence-interval half-width (Student t, n - 1) of the cell at b. Below that the cell
measures early optimisation; at and above it, the representation (up to fine-tuning noise).

Learning rates: the profile's eval.finetune_lr_backbone / finetune_lr_head (VICReg's
semi-supervised lrs, given for batch 256), scaled linearly by batch / eval.finetune_lr_batch, as the runs do (embreg.evaluate.finetune_lr_scale).
Everything else is embreg.evaluate.finetune as the pipeline calls it (crop scale, cosine, SGD).

Usage (from the repository root, after `python pipelines/prepare.py`):

    python pipelines/finetune_budget.py                       # pretrain vicreg seed 0, then measure
    python pipelines/finetune_budget.py --checkpoint ckpt/last.pt \\
        --budget train_10pct=2,4,8 --budget train_1pct=20,40 --ft-seeds 0 1 2 --batch-size 256

Parallel workers (one per subset, budget or seed, each with its own --out) are merged with
`--merge-only --jobs-from W1/finetune_budget.json --jobs-from W2/...`.

Writes --out/finetune_budget.json and .md (default results/budget/). Each finished
(subset, epochs, seed) job is written as it ends, and a rerun with the same checkpoint skips
the jobs already in the JSON, so a long measurement can be stopped and resumed or extended.
Jobs run smallest budget first, alternating subsets, so a cut-short run still has every
subset's smallest doubling.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import sys
import time
from dataclasses import replace
from pathlib import Path
from statistics import mean, stdev
from typing import Any

from _common import fail

DEFAULT_BATCH = 256  # the fine-tuning batch measured by default (eval.finetune_lr_batch scales the lrs)


def t_quantile(p: float, df: int) -> float:
    """Student t quantile (scipy.stats.t.ppf)."""
    from scipy.stats import t

    return float(t.ppf(p, df))


def cell_stats(values: list[float], level: float = 0.95) -> dict[str, float]:
    """Mean, sample std (n - 1), n and the half-width of the two-sided ``level`` Student-t CI
    of the mean. n = 1 has no spread: std and half-width are nan."""
    n = len(values)
    if n == 0:
        raise ValueError("cell_stats needs at least one value")
    if n == 1:
        return {"mean": values[0], "std": math.nan, "n": 1, "ci_half_width": math.nan}
    sd = stdev(values)
    hw = t_quantile(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return {"mean": mean(values), "std": sd, "n": n, "ci_half_width": hw}


def doubling_moves(cells: dict[float, dict[str, float]], min_n: int = 3) -> list[dict[str, Any]]:
    """For each budget b whose double 2b was also measured: the move mean(2b) - mean(b), and
    whether |move| < the CI half-width of the cell at b (the budget would be long enough).
    Both cells need ``min_n`` seeds: with n = 2 the t quantile (12.7) makes any move "stable".
    ``cells``: {epochs: cell_stats(...)}."""
    out = []
    for b in sorted(cells):
        if 2 * b not in cells:
            continue
        move = cells[2 * b]["mean"] - cells[b]["mean"]
        hw = cells[b]["ci_half_width"]
        out.append({"from": b, "to": 2 * b, "move": move, "ci_half_width": hw,
                    "ci_half_width_to": cells[2 * b]["ci_half_width"],
                    "n": [cells[b]["n"], cells[2 * b]["n"]],
                    "stable": bool(abs(move) < hw and min(cells[b]["n"], cells[2 * b]["n"]) >= min_n)})
    return out


def recommend(moves: list[dict[str, Any]]) -> float | None:
    """The smallest budget whose doubling is stable, or None if no doubling is."""
    stable = [m["from"] for m in moves if m["stable"]]
    return min(stable) if stable else None


def parse_budgets(specs: list[str], valid: list[str]) -> dict[str, list[float]]:
    """``["train_1pct=20,40"]`` -> {"train_1pct": [20.0, 40.0]}; unknown subsets list the valid."""
    out: dict[str, list[float]] = {}
    for spec in specs:
        name, _, values = spec.partition("=")
        if name not in valid:
            raise ValueError(f"unknown subset {name!r} in --budget; valid: {', '.join(valid)}")
        try:
            out[name] = sorted(float(v) for v in values.split(","))
        except ValueError:
            raise ValueError(f"--budget {spec!r}: expected NAME=EPOCHS[,EPOCHS...]") from None
    return out


def summarize(jobs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per subset and budget: top-1 cell stats + mean seconds; per subset: doublings and the
    recommended budget."""
    subsets: dict[str, Any] = {}
    for name in sorted({j["subset"] for j in jobs}):
        cells = {}
        for ep in sorted({j["epochs"] for j in jobs if j["subset"] == name}):
            runs = [j for j in jobs if j["subset"] == name and j["epochs"] == ep]
            cells[ep] = {**cell_stats([j["top1"] for j in runs]), "seeds": [j["seed"] for j in runs],
                         "top1": [j["top1"] for j in runs], "steps": runs[0]["steps"],
                         "seconds": mean(j["seconds"] for j in runs),
                         "cpu_seconds": mean(j.get("cpu_seconds", j["seconds"]) for j in runs)}
        moves = doubling_moves(cells)
        subsets[name] = {"cells": {f"{ep:g}": c for ep, c in cells.items()}, "doublings": moves,
                         "recommended_epochs": recommend(moves)}
    return subsets


def markdown(meta: dict[str, Any], subsets: dict[str, Any]) -> str:
    lines = ["# Fine-tuning budget (one fixed checkpoint, fine-tuning seeds varied)", "",
             f"Checkpoint: `{meta['checkpoint']}` ({meta['profile']} profile, {meta['objective']}, "
             f"pretraining seed {meta['pretrain_seed']}). Batch {meta['batch_size']}, lrs scaled by "
             f"batch / {meta.get('lr_reference_batch', 256)}; {meta['threads']} thread(s). Command: `{meta['command']}`"
             + "".join(f"; worker: `{c}`" for c in meta.get("merged_from", [])), "",
             "| subset | epochs | steps | top-1 mean | 95% CI (t, n-1) | n | std | wall s / job | cpu s / job |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, s in subsets.items():
        for ep, c in s["cells"].items():
            lines.append(f"| {name} | {ep} | {c['steps']} | {c['mean']:.1f} | ± {c['ci_half_width']:.1f} | "
                         f"{c['n']} | {c['std']:.2f} | {c['seconds']:.0f} | {c['cpu_seconds']:.0f} |")
    lines += ["", "Doubling criterion: |mean(2b) - mean(b)| < CI half-width at b, both cells with n >= 3.", "",
              "| subset | b -> 2b | move | CI half-width at b | at 2b | n | stable |",
              "| --- | --- | ---: | ---: | ---: | --- | --- |"]
    for name, s in subsets.items():
        for m in s["doublings"]:
            lines.append(f"| {name} | {m['from']:g} -> {m['to']:g} | {m['move']:+.1f} | ± {m['ci_half_width']:.1f} | "
                         f"± {m['ci_half_width_to']:.1f} | {m['n'][0]}, {m['n'][1]} | {'yes' if m['stable'] else 'no'} |")
    lines.append("")
    for name, s in subsets.items():
        rec = s["recommended_epochs"]
        lines.append(f"- {name}: " + (f"smallest stable budget {rec:g} epochs" if rec is not None
                                       else "no measured doubling is stable"))
    return "\n".join(lines) + "\n"


def load_or_pretrain(args: argparse.Namespace, cfg) -> tuple[Any, str]:
    """The model to fine-tune and the checkpoint path it came from."""
    import torch

    from embreg.data import load_split
    from embreg.models import build_model
    from embreg.pretrain import pretrain
    from embreg.run import checkpoint_path, pretraining_split

    ds = cfg.dataset
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.backbone, ds.in_channels, ds.num_classes)
    ckpt = Path(args.checkpoint) if args.checkpoint else checkpoint_path(cfg)
    if not args.checkpoint and not ckpt.is_file():
        train = load_split(cfg.paths.data, ds.name, train=True, image_size=ds.image_size)
        print(f"pretraining {cfg.arm} seed {cfg.seed} into {ckpt}", flush=True)
        pretrain(cfg, model, pretraining_split(cfg, train), ckpt, progress=False)
    if not ckpt.is_file():
        raise FileNotFoundError(f"no checkpoint at {ckpt}")
    model.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=False)["model"])
    return model, str(ckpt)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="default")
    ap.add_argument("--objective", default="vicreg")
    ap.add_argument("--seed", type=int, default=0, help="pretraining seed")
    ap.add_argument("--checkpoint", help="a pretrain checkpoint (its 'model' state); default: pretrain one")
    ap.add_argument("--ckpt-dir", default="checkpoints/budget", help="where a pretrained checkpoint goes")
    ap.add_argument("--budget", action="append", default=[], metavar="SUBSET=E1,E2",
                    help="epochs per subset (repeatable); default train_1pct=20,40 train_10pct=2,4")
    ap.add_argument("--ft-seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--batch-size", type=int, default=DEFAULT_BATCH)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="results/budget")
    ap.add_argument("--jobs-from", action="append", default=[], metavar="JSON",
                    help="also take the jobs of another worker's finetune_budget.json (same checkpoint)")
    ap.add_argument("--merge-only", action="store_true",
                    help="run no job: only merge --jobs-from into --out and summarize")
    args = ap.parse_args()

    import torch

    from embreg.data import Normalizer, load_split, read_index_file, subset_name
    from embreg.evaluate import finetune, finetune_lr_scale
    from embreg.io import read_json, write_json, write_text
    from embreg.params import compose_run

    torch.set_num_threads(args.threads)
    cfg = compose_run(args.profile, [f"objective={args.objective}", f"seed={args.seed}",
                                     f"paths.checkpoints={args.ckpt_dir}"])
    ds, ev = cfg.dataset, cfg.eval
    names = [subset_name(f) for f in ds.subset_fractions]
    budgets = parse_budgets(args.budget or ["train_1pct=20,40", "train_10pct=2,4"], names)
    model, ckpt = load_or_pretrain(args, cfg)
    digest = hashlib.sha256(Path(ckpt).read_bytes()).hexdigest()[:16]
    train = load_split(cfg.paths.data, ds.name, train=True, image_size=ds.image_size)
    test = load_split(cfg.paths.data, ds.name, train=False, image_size=ds.image_size)
    norm = Normalizer(ds.mean, ds.std)
    root = Path(cfg.paths.data) / ds.name / "subsets"
    scale = finetune_lr_scale(replace(ev, finetune_batch_size=args.batch_size))  # the runs' own rule
    meta = {"profile": args.profile, "objective": args.objective, "pretrain_seed": args.seed,
            "checkpoint": ckpt, "checkpoint_sha256_16": digest, "batch_size": args.batch_size,
            "lr_scale": scale, "lr_reference_batch": ev.finetune_lr_batch, "threads": args.threads, "crop_scale": list(ev.finetune_crop_scale),
            "command": " ".join(["python", *sys.argv])}
    out_json = Path(args.out) / "finetune_budget.json"
    jobs: list[dict[str, Any]] = []
    # resume, and merge parallel workers: keep the jobs measured on this very checkpoint and batch
    for path in [out_json, *map(Path, args.jobs_from)]:
        old = read_json(path) if path.is_file() else {"meta": {}}
        if old["meta"].get("checkpoint_sha256_16") == digest and old["meta"]["batch_size"] == args.batch_size:
            if path != out_json:  # say which worker measured what
                meta.setdefault("merged_from", []).append(old["meta"]["command"])
            seen = {(j["subset"], j["epochs"], j["seed"]) for j in jobs}
            jobs += [j for j in old["jobs"] if (j["subset"], j["epochs"], j["seed"]) not in seen]
    done = {(j["subset"], j["epochs"], j["seed"]) for j in jobs}

    def save() -> None:
        subsets = summarize(jobs)
        write_json(out_json, {"meta": meta, "subsets": subsets, "jobs": jobs})
        write_text(out_json.with_suffix(".md"), markdown(meta, subsets))
    # smallest budget first, alternating subsets: a run cut short still has the first doublings
    order = sorted(((i, name, ep) for name, eps in budgets.items() for i, ep in enumerate(eps)),
                   key=lambda t: (t[0], names.index(t[1])))
    for _, name, ep in [] if args.merge_only else order:
        k = names.index(name)
        sub = train.subset(read_index_file(root / f"{name}.txt"))
        lr_b, lr_h = ev.finetune_lr_backbone[k] * scale, ev.finetune_lr_head[k] * scale
        for seed in args.ft_seeds:
            if (name, ep, seed) in done:
                continue
            t0, c0 = time.time(), time.process_time()
            res = finetune(model, sub, test, norm, ds.num_classes, ep, lr_b, lr_h, args.batch_size, seed,
                           crop_scale=tuple(ev.finetune_crop_scale))
            secs, cpu = time.time() - t0, time.process_time() - c0  # cpu: the one-core cost under contention
            steps = max(1, round(ep * len(sub) / min(args.batch_size, len(sub))))
            jobs.append({"subset": name, "epochs": ep, "seed": seed, "steps": steps, "lr_backbone": lr_b,
                         "lr_head": lr_h, "top1": res["top1"], "top5": res["top5"], "seconds": secs,
                         "cpu_seconds": cpu})
            print(f"{name} {ep:g} ep seed {seed}: top-1 {res['top1']:.2f} ({steps} steps, {secs:.0f} s, "
                  f"{cpu:.0f} s cpu)", flush=True)
            save()
    if jobs:
        save()


if __name__ == "__main__":
    sys.exit(fail(main))
