"""A synthetic results directory in the training side's layout, with known numbers and every failure mode.

Three seeds per arm and reference, sweep points on one seed; ``pixels`` (no network), a supervised
baseline with a longer budget, an arm whose fine-tuning is off by design, a failed seed, a missing
seed, a diverged arm and a sweep point that never ran.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

SEEDS = [0, 1, 2]
LAYER_SWEEP = "vicreg_all@layer_weight=0.2"
ABLATIONS: dict[str, dict[str, Any]] = {
    "anticollapse": {"title": "A. Anti-collapse term", "question": "Which term?",
                     "arms": ["inv_only", "vicreg_nocov", "var_l2", "svmax"],
                     "comparisons": [["svmax", "vicreg_nocov"], ["var_l2", "vicreg_nocov"],
                                     ["inv_only", "vicreg_nocov"]],
                     "sweeps": [("var_l2", "objective.terms.variance", [0.1, 10.0]),
                                ("svmax", "objective.terms.svmax", [0.1, 10.0])]},
    # no comparisons in the manifest: read from conf/ablation/covariance.yaml (CONF below)
    "covariance": {"title": "B. Covariance", "question": "What does cov add?",
                   "arms": ["vicreg", "vicreg_nocov", "inv_only"], "sweeps": []},
    "layers": {"title": "C. Layers", "question": "At what cost?",
               "arms": ["vicreg", "vicreg_all", "svmax", "svmax_all"],
               "comparisons": [["vicreg_all", "vicreg"], ["svmax_all", "svmax"], [LAYER_SWEEP, "vicreg"]],
               "sweeps": [("vicreg_all", "objective.layer_weight", [0.2])]},
}
CONF = {"covariance": [["vicreg_nocov", "vicreg"], ["inv_only", "vicreg"]]}
# run_id -> per seed: (linear top-1, projector RankMe) for a finished seed, or (state, error)
RUNS: dict[str, dict[int, tuple]] = {
    "pixels": {0: (81.8, 0.0), 1: (81.9, 0.0), 2: (81.7, 0.0)},
    "random_init": {0: (77.0, 110.0), 1: (78.0, 130.0), 2: (77.5, 120.0)},
    "supervised": {0: (85.0, 200.0), 1: (85.6, 210.0), 2: (86.0, 220.0)},
    "inv_only": {0: (75.0, 2.0), 1: (76.0, 3.0), 2: (75.5, 4.0)},
    "vicreg_nocov": {0: (70.0, 3.5), 1: (70.4, 4.0), 2: (70.9, 3.0)},
    "var_l2": {0: (69.0, 6.0), 1: (72.0, 7.0), 2: ("failed", "RuntimeError: out of memory\nTraceback ...")},
    "svmax": {0: (80.0, 130.0), 1: (80.5, 135.0), 2: (81.0, 140.0)},
    "vicreg": {0: (79.0, 109.0), 1: (79.5, 110.0), 2: (78.5, 108.0)},
    "vicreg_all": {0: (76.0, 400.0), 1: (76.4, 402.0)},  # seed 2: no directory at all
    "svmax_all": {s: ("diverged", f"loss is NaN at step {9 + s}") for s in SEEDS},
    "var_l2@variance=0.1": {0: (60.0, 10.0)},
    "var_l2@variance=10.0": {0: (75.0, 70.0)},
    "svmax@svmax=0.1": {0: (50.0, 20.0)},
    # svmax@svmax=10.0: never ran
    LAYER_SWEEP: {0: (77.0, 300.0)},
}
KIND = {"pixels": "pixels", "random_init": "untrained", "supervised": "supervised"}
NO_FINETUNE = {"inv_only", LAYER_SWEEP}  # eval.semi_supervised: false
BASE_COEF = {"var_l2": ("variance", 1.0), "svmax": ("svmax", 1.0), "vicreg_all": ("layer_weight", 1.0)}
DIMS = {"layer1": 64, "layer2": 128, "layer3": 256, "backbone": 512, "projector": 1024}


def make_metrics(run_id: str, seed: int, top1: float, rankme: float) -> dict[str, Any]:
    """metrics.json with known numbers: kNN-20 = top1 - 1, 10% = top1 - 5, 1% = top1 - 20 (when fine-tuned)."""
    arm = run_id.split("@")[0]
    m: dict[str, Any] = {"run_id": run_id, "arm": arm, "seed": seed, "linear_top1": top1, "linear_top5": 99.0,
                         "knn20_top1": top1 - 1, "knn200_top1": top1 - 2}
    if KIND.get(arm) == "pixels":
        return m  # the contract: no collapse, no semi, no cost keys
    m["collapse"] = {emb: {"s_mu": 0.5, "s_mu_lower": 0.1, "s_mu_upper": 3.0,
                           "s_mu_score": (rankme if emb == "projector" else 100.0) / d, "dim": d,
                           "rankme": rankme if emb == "projector" else 100.0, "frac_dead_dims": 0.0,
                           "std_l2": 0.5 + 0.01 * seed, "frac_dead_dims_l2": 0.0, "mean_abs_corr": 0.1 + 0.01 * seed}
                     for emb, d in DIMS.items()}
    m.update({"pretrain_seconds": 100.0, "eval_seconds": 10.0})
    if run_id not in NO_FINETUNE and arm != "random_init":
        m.update({"semi_10pct_top1": top1 - 5, "semi_10pct_top5": 95.0, "semi_1pct_top1": top1 - 20,
                  "semi_1pct_top5": 80.0})
    if arm != "random_init":
        m.update({"steps": 75, "sec_per_step": 0.5 if arm != "supervised" else 0.25, "images_per_sec": 128.0,
                  "peak_memory_mb": 1000.0})
    return m


def write_run(root: Path, run_id: str, seed: int, spec: tuple) -> str:
    """One seed directory in the training code's layout; returns its state."""
    rd = root / "runs" / run_id / f"seed{seed}"
    rd.mkdir(parents=True)
    arm = run_id.split("@")[0]
    terms = {} if arm in KIND else {"invariance": 1.0, "variance": 0.0 if arm == "inv_only" else 25.0}
    objective = {"name": arm, "kind": KIND.get(arm, "ssl"), "terms": terms,
                 "layers": "all" if arm.endswith("_all") else "last", "layer_weight": 1.0}
    if arm in BASE_COEF:
        key, base = BASE_COEF[arm]
        terms[key.split(".")[-1]] = float(run_id.split("=")[1]) if "@" in run_id else base
    # as the default profile writes it: every run carries both budgets; supervised trains 20 epochs
    config = {"objective": objective, "optim": {"batch_size": 64},
              "pretrain": {"epochs": 5, "steps_per_epoch": 15, "supervised_epochs": 20},
              "eval": {"semi_supervised": run_id not in NO_FINETUNE}}
    (rd / "config.yaml").write_text(yaml.safe_dump(config))
    state, error = ("done", None) if isinstance(spec[0], float) else spec
    (rd / "status.json").write_text(json.dumps({"run_id": run_id, "arm": arm, "seed": seed, "state": state,
                                                "error": error, "seconds": 12.0}))
    if state == "done":
        (rd / "metrics.json").write_text(json.dumps(make_metrics(run_id, seed, *spec)))
        if KIND.get(arm) != "pixels":
            (rd / "spectra.json").write_text(json.dumps({e: [1.0, 0.5 + 0.1 * seed, 0.25] for e in DIMS}))
        if arm not in KIND:
            hist = [{"epoch": e, "loss": 3.0 - e, "invariance": 1.0 / e + seed, "variance": 0.5,
                     "covariance": 0.1, "svmax": 0.3} for e in (1, 2)]
            (rd / "history.json").write_text(json.dumps(hist))
    return state


def build_results(root: Path) -> tuple[Path, Path]:
    """(results dir, conf/ablation dir) with every case."""
    states = {rid: {str(s): write_run(root, rid, s, spec) for s, spec in seeds.items()} for rid, seeds in RUNS.items()}
    states["vicreg_all"]["2"] = "missing"
    states["svmax@svmax=10.0"] = {"0": "missing"}
    ablations = {}
    for name, a in ABLATIONS.items():
        sweeps = [{"arm": arm, "key": key, "values": values,
                   "runs": [f"{arm}@{key.split('.')[-1]}={v}" for v in values]} for arm, key, values in a["sweeps"]]
        ablations[name] = {"title": a["title"], "question": a["question"], "arms": a["arms"],
                           "baselines": ["pixels", "random_init", "supervised"], "seeds": SEEDS,
                           "sweep_seeds": [0], "sweeps": sweeps}
        if "comparisons" in a:
            ablations[name]["comparisons"] = a["comparisons"]
    manifest = {"profile": "default", "ablations": ablations, "runs": states}
    (root / "runs" / "manifest.json").write_text(json.dumps(manifest))
    conf = root / "conf_ablation"
    conf.mkdir()
    for name, pairs in CONF.items():
        (conf / f"{name}.yaml").write_text(yaml.safe_dump({"name": name, "comparisons": pairs}))
    return root, conf


@pytest.fixture
def results_dir(tmp_path: Path) -> tuple[Path, Path]:
    return build_results(tmp_path)


@pytest.fixture(scope="session")
def analyzed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """Analysed once for every module's read-only tests (drawing the plots takes seconds)."""
    from embreg.analysis.report import analyze

    root, conf = build_results(tmp_path_factory.mktemp("results"))
    return root, analyze(root, conf)
