"""The robustness studies' analysis on a synthetic results directory with known numbers: the
learning-rate and batch-size curves, their tests (hand-computed), verdicts, a diverged point as a
marked cell and plot point, the rank correlation, and the REPORT / summary / README block."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from scipy import stats as sps

from embreg.analysis.exports import MAX_METRICS, count_values, read_metrics
from embreg.analysis.readme import block_in, markers, splice
from embreg.analysis.report import analyze
from embreg.analysis.stats import change_difference, welch
from tests.analysis.helpers import missing_from_summary

SEEDS = [0, 1, 2]
BASE_LR = 1e-3
MULTIPLES = [3, 10, 30]
# arm -> kind; per lr multiple: three seeds of the usable metric (linear top-1, or recall@1 for metric arms)
LR_ARMS = {"inv_only": "ssl", "svmax": "ssl", "contrastive": "metric", "contrastive_svmax": "metric"}
LR_VALUES = {
    ("inv_only", 1): [70.0, 71.0, 72.0], ("inv_only", 3): [69.0, 70.0, 71.0],
    ("inv_only", 10): [60.0, 61.0, 62.5], ("inv_only", 30): [50.0, 52.0, 51.0],
    ("svmax", 1): [78.0, 79.0, 80.0], ("svmax", 3): [78.0, 79.5, 80.0],
    ("svmax", 10): [77.5, 78.0, 79.0], ("svmax", 30): [76.0, 77.0, 78.0],
    ("contrastive", 1): [40.0, 42.0, 41.0], ("contrastive", 3): [39.0, 41.0, 40.0],
    ("contrastive", 10): [38.0, 40.0, 39.5], ("contrastive", 30): None,  # every seed diverged
    ("contrastive_svmax", 1): [43.0, 44.0, 42.0], ("contrastive_svmax", 3): [42.0, 43.0, 44.0],
    ("contrastive_svmax", 10): [41.0, 43.0, 42.0], ("contrastive_svmax", 30): [40.0, 41.0, 42.5],
}
BATCHES = [32, 128, 512]
# (arm, b) -> embedding s_mu per seed; the bounds are L = 0.1, U = 3.0 throughout
BATCH_SMU = {("inv_only", 32): [0.50, 0.55, 0.60], ("inv_only", 128): [0.40, 0.45, 0.50],
             ("inv_only", 512): [0.30, 0.35, 0.32],
             ("svmax", 32): [1.50, 1.60, 1.55], ("svmax", 128): [1.80, 1.85, 1.90], ("svmax", 512): [2.00, 2.10, 2.05],
             ("vicreg", 32): [1.60, 1.70, 1.40], ("vicreg", 128): [1.70, 1.75, 1.95],
             ("vicreg", 512): [1.95, 2.35, 2.15]}


def _lr_id(arm: str, m: int) -> str:
    return arm if m == 1 else f"{arm}@lr={BASE_LR * m:g}"


def _batch_id(arm: str, b: int) -> str:
    return f"{arm}@batch_size={b}"


def _write(root: Path, rid: str, seed: int, config: dict, metrics: dict | None, state: str = "done") -> None:
    rd = root / "runs" / rid / f"seed{seed}"
    rd.mkdir(parents=True)
    (rd / "config.yaml").write_text(yaml.safe_dump(config))
    err = "loss is nan at step 40" if state == "diverged" else None
    (rd / "status.json").write_text(json.dumps({"run_id": rid, "seed": seed, "state": state, "error": err,
                                                "seconds": 30.0}))
    if metrics is not None:
        (rd / "metrics.json").write_text(json.dumps({"run_id": rid, "seed": seed, **metrics}))


def _collapse(smu: float, dim: int = 128) -> dict:
    return {"projector": {"s_mu": smu, "s_mu_lower": 0.1, "s_mu_upper": 3.0, "s_mu_score": (smu - 0.1) / 2.9,
                          "rankme": 10 * smu, "dim": dim, "frac_dead_dims": 0.0, "mean_abs_corr": 0.2},
            "backbone": {"s_mu": 1.0, "s_mu_lower": 0.2, "s_mu_upper": 4.0, "s_mu_score": 0.2, "rankme": 50.0,
                         "dim": 512, "frac_dead_dims": 0.0, "mean_abs_corr": 0.2}}


def build(root: Path) -> Path:
    states: dict[str, dict[str, str]] = {}
    for (arm, m), vals in LR_VALUES.items():
        rid = _lr_id(arm, m)
        cfg = {"objective": {"name": arm, "kind": LR_ARMS[arm]}, "optim": {"lr": BASE_LR * m, "batch_size": 64},
               "pretrain": {"epochs": 5, "steps_per_epoch": 15}}
        for s in SEEDS:
            if vals is None:
                _write(root, rid, s, cfg, None, "diverged")
                states.setdefault(rid, {})[str(s)] = "diverged"
                continue
            usable = "recall_at_1" if LR_ARMS[arm] == "metric" else "linear_top1"
            metrics = {"linear_top1": vals[s] if usable == "linear_top1" else 60.0 + s, "knn20_top1": 60.0,
                       "recall_at_1": vals[s] if usable == "recall_at_1" else 30.0 + s,
                       "backbone_recall_at_1": 35.0, "collapse": _collapse(1.0 + 0.1 * s)}
            _write(root, rid, s, cfg, metrics)
            states.setdefault(rid, {})[str(s)] = "done"
    for ref, top1 in (("pixels", 81.8), ("random_init", 77.6)):
        for s in SEEDS:
            cfg = {"objective": {"name": ref, "kind": "pixels" if ref == "pixels" else "untrained"},
                   "optim": {"lr": BASE_LR, "batch_size": 64}}
            _write(root, ref, s, cfg, {"linear_top1": top1 + 0.1 * s, "knn20_top1": 80.0, "recall_at_1": 50.0 + s})
            states.setdefault(ref, {})[str(s)] = "done"
    for (arm, b), smus in BATCH_SMU.items():
        rid = _batch_id(arm, b)
        cfg = {"objective": {"name": arm, "kind": "ssl"}, "optim": {"lr": BASE_LR, "batch_size": b},
               "pretrain": {"epochs": 5, "steps_per_epoch": max(1, round(15 * 64 / b))}}
        for s in SEEDS:
            # linear top-1 rises with s_mu: a perfect rank correlation across the study
            _write(root, rid, s, cfg, {"linear_top1": 50.0 + 10 * smus[s], "recall_at_1": 30.0,
                                       "collapse": _collapse(smus[s])})
            states.setdefault(rid, {})[str(s)] = "done"
    lr_sweeps = [{"arm": arm, "key": "optim.lr", "values": [BASE_LR * m for m in MULTIPLES],
                  "runs": [_lr_id(arm, m) for m in MULTIPLES]} for arm in LR_ARMS]
    batch_sweeps = [{"arm": arm, "key": "optim.batch_size", "values": BATCHES,
                     "runs": [_batch_id(arm, b) for b in BATCHES]} for arm in ("inv_only", "svmax", "vicreg")]
    manifest = {"profile": "robustness", "runs": states, "ablations": {
        "lr_robustness": {"title": "D. Learning rate", "question": "Robust?", "study": "learning_rate",
                          "arms": list(LR_ARMS), "baselines": ["pixels", "random_init"], "seeds": SEEDS,
                          "sweep_seeds": SEEDS, "comparisons": [], "sweeps": lr_sweeps},
        "batch_size": {"title": "E. Batch size", "question": "Embedding use?", "study": "batch_size", "arms": [],
                       "baselines": [], "seeds": SEEDS, "sweep_seeds": SEEDS, "comparisons": [],
                       "sweeps": batch_sweeps}}}
    (root / "runs" / "manifest.json").write_text(json.dumps(manifest))
    return root


@pytest.fixture(scope="module")
def analyzed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = build(tmp_path_factory.mktemp("robustness"))
    return root, analyze(root, root / "no_conf")


def test_change_difference_by_hand():
    a1, am, b1, bm = [1.0, 2.0, 3.0], [1.0, 3.0, 5.0], [4.0, 6.0], [0.0, 1.0, 2.0, 5.0]
    t = change_difference(a1, am, b1, bm)
    means = [3.0, 2.0, 2.0, 5.0]  # am, a1, bm, b1
    assert t.effect == pytest.approx((means[0] - means[1]) - (means[2] - means[3]))  # 4.0
    v = [4.0 / 3, 1.0 / 3, (14.0 / 3) / 4, 2.0 / 2]  # sample variance / n
    se = math.sqrt(sum(v))
    dof = sum(v) ** 2 / (v[0] ** 2 / 2 + v[1] ** 2 / 2 + v[2] ** 2 / 3 + v[3] ** 2 / 1)
    assert t.t == pytest.approx(4.0 / se) and t.dof == pytest.approx(dof)
    assert t.p == pytest.approx(2 * sps.t.sf(4.0 / se, dof))
    # with the first groups fixed at zero spread it is Welch's test of the later groups
    w, c = welch(am, bm), change_difference([0.0, 0.0], am, [0.0, 0.0], bm)
    assert c.t == pytest.approx(w.t) and c.dof == pytest.approx(w.dof)
    assert math.isnan(change_difference([1.0], am, b1, bm).p)  # a group of one has no variance


def test_lr_study_tests_and_verdicts(analyzed):
    _, summary = analyzed
    st = summary["studies"]["lr_robustness"]
    test = st["tests"]["svmax vs inv_only | linear top-1: change from 1x at 30x"]
    s1, s30 = LR_VALUES[("svmax", 1)], LR_VALUES[("svmax", 30)]
    i1, i30 = LR_VALUES[("inv_only", 1)], LR_VALUES[("inv_only", 30)]
    expect = change_difference(s1, s30, i1, i30)
    assert test["effect"] == pytest.approx(expect.effect) and test["p"] == pytest.approx(expect.p)
    assert test["effect"] == pytest.approx((77.0 - 79.0) - (51.0 - 71.0))
    assert st["verdicts"]["svmax vs inv_only"]["verdict"] == "supported"
    # every contrastive seed diverged at 30x: that point is untestable; 3 of 9 diverged beyond 1x against 0 of 9
    at30 = st["tests"]["contrastive_svmax vs contrastive | recall@1 (held-out classes): change from 1x at 30x"]
    assert at30["p"] is None and at30["effect"] is None and at30["n_ref"] == 0
    div = st["divergence"]["contrastive_svmax vs contrastive"]
    assert (div["arm_diverged"], div["arm_finished"], div["ref_diverged"], div["ref_finished"]) == (0, 9, 3, 6)
    assert div["p"] == pytest.approx(sps.fisher_exact([[0, 9], [3, 6]])[1])
    assert st["verdicts"]["contrastive_svmax vs contrastive"]["metric"] == "recall_at_1"
    # Holm across the study's five testable tests (three multiples x two pairs, minus the diverged 30x)
    ps = [t["p"] for t in st["tests"].values() if t["p"] is not None]
    assert len(ps) == 5
    holm_min = min(t["p_holm"] for t in st["tests"].values() if t["p_holm"] is not None)
    assert holm_min == pytest.approx(min(1.0, len(ps) * min(ps)))


def test_diverged_point_is_a_marked_cell_not_a_gap(analyzed):
    root, _ = analyzed
    md = (root / "tables" / "lr_robustness.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| contrastive ") and "| 30x " in line)
    assert "0/3, 3 diverged" in row and "—" in row
    assert "loss is nan at step 40" in md  # the footnote says why
    assert (root / "plots" / "lr_robustness.png").read_bytes()[:4] == b"\x89PNG"


def test_batch_study_tests_verdicts_and_rank_correlation(analyzed):
    root, summary = analyzed
    st = summary["studies"]["batch_size"]
    for b in BATCHES:
        t = st["tests"][f"svmax vs inv_only | embedding s_mu at b = {b}"]
        assert t["effect"] == pytest.approx(welch(BATCH_SMU[("svmax", b)], BATCH_SMU[("inv_only", b)]).effect)
    assert st["verdicts"]["svmax vs inv_only"]["verdict"] == "supported"
    assert st["verdicts"]["svmax vs vicreg"]["verdict"] == "not resolved at this scale"  # no batch size resolved
    rho = next(s for s in st["spearman"] if s["x"] == "projector_s_mu_score")
    assert rho["rho"] == pytest.approx(1.0) and rho["n"] == 27
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in (root / "tables" / "batch_size.md").read_text()
            .splitlines() if line.startswith("| svmax ")]
    assert rows[-1][:4] == ["svmax", "512", "10 (5120 images)", "3/3"] and rows[-1][5:7] == ["0.100", "3.000"]
    assert (root / "plots" / "batch_size.png").read_bytes()[:4] == b"\x89PNG"


def test_report_and_readme_block_state_only_summary_numbers(analyzed):
    root, summary = analyzed
    report = (root / "REPORT.md").read_text()
    assert "# Embedding-regularizer robustness studies — profile `robustness`" in report
    assert "`svmax` vs `inv_only` (`linear top-1`): **supported**" in report
    assert "Coefficient sensitivity" not in report and "supervised" not in report.split("## Protocol")[0]
    block = (root / "README_results.md").read_text()
    assert "**supported**" in block and missing_from_summary(block.split("What the numbers show")[1], summary) == []
    readme = f"top\n{markers()[0]}\nold\n{markers()[1]}\n{markers('robustness')[0]}\nx\n{markers('robustness')[1]}\n"
    spliced = splice(readme, block, "robustness")
    assert block_in(spliced, "robustness") == block and block_in(spliced) == "old\n"


def test_metrics_hold_each_arm_per_point_and_the_verdicts(analyzed):
    """DVC's metrics: per study the verdict counts and each arm's mean and CI at each point, one file
    per point and arm, named so that `dvc metrics show` sorts them (zero-padded points); a point whose
    seeds all diverged has no file."""
    root, summary = analyzed
    metrics = read_metrics(root)
    assert {path.split("/")[0] for path in metrics} == {"lr_robustness", "batch_size"}
    verdicts = [v["verdict"] for v in summary["studies"]["lr_robustness"]["verdicts"].values()]
    assert metrics["lr_robustness/verdicts.json"] == {
        "supported": verdicts.count("supported"), "contradicted": verdicts.count("contradicted"), "tested": len(verdicts)}
    svmax = sorted(p for p in metrics if p.startswith("lr_robustness/") and p.endswith("/svmax.json"))
    assert svmax == [f"lr_robustness/lr{m}x/svmax.json" for m in ("01", "03", "10", "30")]
    for m in (1, *MULTIPLES):
        cell = metrics[f"lr_robustness/lr{m:02d}x/svmax.json"]
        assert cell["mean"] == pytest.approx(sum(LR_VALUES[("svmax", m)]) / 3, abs=1e-3)
        assert cell["ci_low"] <= cell["mean"] <= cell["ci_high"]
    assert "lr_robustness/lr30x/contrastive.json" not in metrics and "lr_robustness/lr10x/contrastive.json" in metrics
    assert metrics["batch_size/b032/vicreg.json"]["mean"] == pytest.approx(1.567, abs=1e-3)
    assert count_values(metrics) <= MAX_METRICS
