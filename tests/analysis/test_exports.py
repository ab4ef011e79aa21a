"""The files DVC reads (metrics.json, tables/accuracy.csv, tables/history.csv) against the tables, and
dvc.yaml's declarations of them, drawn by the real `dvc plots show` in a temporary repository."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from embreg.analysis import exports
from embreg.analysis.aggregate import load_results, loss_terms
from embreg.analysis.exports import ACCURACY_TABLE, HISTORY_TABLE, MAX_METRICS, METRICS_FILE, count_values
from embreg.analysis.summary import build
from tests.analysis.test_analysis import ci_text, read_table, row, top1

REPO = Path(__file__).resolve().parents[2]


def cell(entry: dict) -> str:
    """A metrics.json entry as the tables print it: ``mean [low, high]`` to one decimal."""
    return f"{entry['mean']:.1f} [{entry['ci_low']:.1f}, {entry['ci_high']:.1f}]"


def test_metrics_json_is_the_tables_headline(analyzed: tuple[Path, dict]) -> None:
    root, _ = analyzed
    metrics = json.loads((root / METRICS_FILE).read_text())
    assert count_values(metrics) <= MAX_METRICS
    # the ablations' arms and the references; no sweep point
    arms = {"pixels", "random_init", "supervised", "inv_only", "vicreg_nocov", "var_l2", "svmax", "vicreg",
            "vicreg_all", "svmax_all"}
    assert set(metrics) == arms | {"findings"}
    main = read_table(root, "main")
    for arm in ("svmax", "vicreg", "random_init", "supervised"):
        assert metrics[arm]["n"] == 3
        assert cell(metrics[arm]["linear_top1"]) == row(main, arm)["linear top-1"] == ci_text(top1(arm))
        assert cell(metrics[arm]["knn20_top1"]) == row(main, arm)["kNN-20 top-1"].rstrip("†")
    assert cell(metrics["svmax"]["semi_10pct_top1"]) == row(main, "svmax")["10% top-1"]
    assert "semi_1pct_top1" not in metrics["pixels"] and "semi_1pct_top1" not in metrics["inv_only"]  # by design
    assert metrics["svmax_all"] == {"n": 0}  # every seed diverged: no value, and no crash
    assert metrics["var_l2"]["n"] == 2
    # the findings: Holm-significant accuracy and collapse tests over the testable ones, as the tables say
    for family, suffix in (("accuracy", "_tests"), ("collapse", "_collapse_tests")):
        tests = pd.concat([read_table(root, f"{n}{suffix}") for n in ("anticollapse", "covariance", "layers")])
        assert metrics["findings"][family] == {"supported": int((tests["significant"] == "yes").sum()),
                                               "tested": int(tests["significant"].isin(["yes", "no"]).sum())}
    assert metrics["findings"]["accuracy"]["supported"] > 0


def test_metrics_drop_the_intervals_past_the_bound(results_dir: tuple[Path, Path],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    an = build(load_results(results_dir[0]), results_dir[1])
    full = count_values(exports.metrics(an))
    monkeypatch.setattr(exports, "MAX_METRICS", full - 1)
    metrics = exports.metrics(an)
    assert count_values(metrics) < full and "ci_low" not in json.dumps(metrics)
    assert metrics["svmax"]["linear_top1"] == {"mean": 80.5}


def test_accuracy_and_history_tables(analyzed: tuple[Path, dict]) -> None:
    root, _ = analyzed
    acc = pd.read_csv(root / "tables" / ACCURACY_TABLE)
    assert list(acc.columns) == exports.ACCURACY_COLUMNS
    sv = acc[(acc["arm"] == "svmax") & (acc["metric"] == "linear_top1")].iloc[0]
    assert (sv["mean"], sv["n"]) == (80.5, 3) and f"{sv['ci_low']:.1f}" in ci_text(top1("svmax"))
    assert not acc["arm"].str.contains("@").any() and "svmax_all" not in set(acc["arm"])  # no value, no row
    hist = pd.read_csv(root / "tables" / HISTORY_TABLE)
    assert list(hist.columns) == ["term", "arm", "epoch", "value"]
    # only the ablations' arms (no reference, no sweep point), only logged terms
    assert set(hist["arm"]) == {"inv_only", "vicreg_nocov", "var_l2", "svmax", "vicreg", "vicreg_all"}
    assert set(hist["term"]) <= set(loss_terms())
    inv = hist[(hist["arm"] == "svmax") & (hist["term"] == "invariance")].set_index("epoch")["value"]
    assert inv.to_dict() == pytest.approx({1: 2.0, 2: 1.5})  # 1/epoch + seed, mean over seeds 0, 1, 2


def test_first_knn_follows_the_config(results_dir: tuple[Path, Path]) -> None:
    root, _ = results_dir
    res = load_results(root)
    assert exports.first_knn(res, ["svmax"]) == "knn20_top1"  # no eval.knn_k: the smallest k found
    for seed in (0, 1, 2):
        cfg_path = root / "runs" / "svmax" / f"seed{seed}" / "config.yaml"
        cfg = yaml.safe_load(cfg_path.read_text())
        cfg["eval"]["knn_k"] = [200, 20]
        cfg_path.write_text(yaml.safe_dump(cfg))
    assert exports.first_knn(load_results(root), ["svmax"]) == "knn200_top1"


def _stage(dvc: dict, name: str) -> dict:
    return dvc["stages"][name]


def _path(entry: str | dict) -> str:
    return entry if isinstance(entry, str) else next(iter(entry))


def test_dvc_yaml_declares_what_the_analysis_writes(analyzed: tuple[Path, dict]) -> None:
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    root, _ = analyzed
    for stage, prefix in (("analyze", "results/${profile}"), ("robustness_analyze", "results/robustness")):
        st = _stage(dvc, stage)
        assert [_path(m) for m in st["metrics"]] == [f"{prefix}/{METRICS_FILE}"]
        # the plots folder as one output (a profile with fewer ablations writes fewer PNGs)
        assert [_path(p) for p in st["plots"]] == [f"{prefix}/plots"]
        assert f"{prefix}/summary.json" in [_path(o) for o in st["outs"]]
        assert all(next(iter(e.values())).get("cache") is False for e in [*st["metrics"], *st["plots"]])
    columns = {ACCURACY_TABLE: exports.ACCURACY_COLUMNS, HISTORY_TABLE: ["term", "arm", "epoch", "value"]}
    for entry in dvc["plots"]:
        (title, spec), = entry.items()
        (path, field), = spec["y"].items()
        name = Path(path).name
        assert re.fullmatch(r"results/(\$\{profile\}|robustness)/tables/[a-z_]+\.csv", path), title
        assert {field, spec["x"]} <= set(columns[name]), title  # the columns the analysis writes
        assert (root / "tables" / name).is_file()
        template = json.loads((REPO / ".dvc" / "plots" / f"{spec['template']}.json").read_text())
        text = json.dumps(template)
        assert all(f"<DVC_METRIC_{a}>" in text for a in ("DATA", "X", "Y")), spec["template"]


@pytest.mark.skipif(shutil.which("git") is None, reason="dvc needs git")
def test_dvc_plots_show_renders_the_tables(analyzed: tuple[Path, dict], tmp_path: Path) -> None:
    """The real `dvc plots show` on dvc.yaml's top-level plots, templates and the analysed tables."""
    root, _ = analyzed
    for profile in ("default", "robustness"):
        shutil.copytree(root / "tables", tmp_path / "results" / profile / "tables")
    shutil.copytree(REPO / ".dvc" / "plots", tmp_path / ".dvc" / "plots")
    (tmp_path / ".dvc" / "config").write_text("[core]\n    analytics = false\n")
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"vars": [{"profile": "default"}], "plots": dvc["plots"]}))
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    out = subprocess.run([sys.executable, "-m", "dvc", "plots", "show", "--json"], cwd=tmp_path,
                         capture_output=True, text=True, check=True)
    shown = json.loads(out.stdout)
    assert not shown.get("errors"), shown.get("errors")
    for entry in dvc["plots"]:
        (title, _), = entry.items()
        spec = shown["data"][title][0]["content"]
        assert spec["data"]["values"], title  # rows reached the template
        assert "<DVC_METRIC" not in json.dumps(spec), title  # every anchor filled
