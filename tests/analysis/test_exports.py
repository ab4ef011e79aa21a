"""The files DVC reads (metrics/, tables/accuracy.csv, tables/history.csv) against the tables, and
dvc.yaml's declarations of them, drawn by the real `dvc plots show` and printed by the real `dvc
metrics show` in a temporary repository."""

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
from embreg.analysis.exports import (
    ACCURACY_TABLE,
    HISTORY_TABLE,
    MAX_METRICS,
    METRICS_DIR,
    count_values,
    read_metrics,
)
from embreg.analysis.summary import build
from tests.analysis.test_analysis import ci_text, read_table, row, top1

REPO = Path(__file__).resolve().parents[2]


def cell(entry: dict) -> str:
    """A metrics file as the tables print it: ``mean [low, high]`` to one decimal."""
    return f"{entry['mean']:.1f} [{entry['ci_low']:.1f}, {entry['ci_high']:.1f}]"


def test_metrics_are_the_tables_headline(analyzed: tuple[Path, dict]) -> None:
    root, _ = analyzed
    metrics = read_metrics(root)
    assert count_values(metrics) <= MAX_METRICS
    # one file per cell: the ablations' arms and the references (no sweep point), per headline metric
    arms = {"pixels", "random_init", "supervised", "inv_only", "vicreg_nocov", "var_l2", "svmax", "vicreg",
            "vicreg_all"}  # svmax_all: every seed diverged, no value, no file (and no crash)
    assert {p for p in metrics if p.startswith("linear_top1/")} == {f"linear_top1/{a}.json" for a in arms}
    assert {p.split("/")[0] for p in metrics} == {"findings", "linear_top1", "knn20_top1", "semi_10pct_top1",
                                                  "semi_1pct_top1"}
    main = read_table(root, "main")
    for arm in ("svmax", "vicreg", "random_init", "supervised"):
        assert set(metrics[f"linear_top1/{arm}.json"]) == {"mean", "ci_low", "ci_high"}
        assert cell(metrics[f"linear_top1/{arm}.json"]) == row(main, arm)["linear top-1"] == ci_text(top1(arm))
        assert cell(metrics[f"knn20_top1/{arm}.json"]) == row(main, arm)["kNN-20 top-1"].rstrip("†")
    assert cell(metrics["semi_10pct_top1/svmax.json"]) == row(main, "svmax")["10% top-1"]
    assert "semi_1pct_top1/pixels.json" not in metrics and "semi_1pct_top1/inv_only.json" not in metrics  # by design
    # the findings: Holm-significant accuracy and collapse tests over the testable ones, as the tables say
    for family, suffix in (("accuracy", "_tests"), ("collapse", "_collapse_tests")):
        tests = pd.concat([read_table(root, f"{n}{suffix}") for n in ("anticollapse", "covariance", "layers")])
        assert metrics[f"findings/{family}.json"] == {"supported": int((tests["significant"] == "yes").sum()),
                                                      "tested": int(tests["significant"].isin(["yes", "no"]).sum())}
    assert metrics["findings/accuracy.json"]["supported"] > 0
    assert not (root / "metrics.json").exists()  # the earlier single file, one row thousands of columns wide


def test_metrics_drop_the_intervals_past_the_bound(results_dir: tuple[Path, Path],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    an = build(load_results(results_dir[0]), results_dir[1])
    full = count_values(exports.metrics(an))
    monkeypatch.setattr(exports, "MAX_METRICS", full - 1)
    metrics = exports.metrics(an)
    assert count_values(metrics) < full and "ci_low" not in json.dumps(metrics)
    assert metrics["linear_top1/svmax.json"] == {"mean": 80.5}


def test_metrics_are_rewritten_whole(results_dir: tuple[Path, Path], tmp_path: Path) -> None:
    """A cell no longer computed leaves no file behind; the earlier single file is removed."""
    an = build(load_results(results_dir[0]), results_dir[1])
    out = tmp_path / "out"
    (out / METRICS_DIR / "linear_top1").mkdir(parents=True)
    (out / METRICS_DIR / "linear_top1" / "gone.json").write_text('{"mean": 1}')
    (out / "metrics.json").write_text("{}")
    exports.write_metrics(an, out)
    assert read_metrics(out) == exports.metrics(an)
    assert sorted(p.name for p in out.iterdir()) == [METRICS_DIR]  # no staging left, no old file


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
    for stage, prefix in (("analyze", "results/${default.profile}"),
                          ("robustness_analyze", "results/${robustness.profile}")):
        st = _stage(dvc, stage)
        assert [_path(m) for m in st["metrics"]] == [f"{prefix}/{METRICS_DIR}"]
        # the plots folder as one output (a profile with fewer ablations writes fewer PNGs)
        assert [_path(p) for p in st["plots"]] == [f"{prefix}/plots"]
        assert f"{prefix}/summary.json" in [_path(o) for o in st["outs"]]
        assert all(next(iter(e.values())).get("cache") is False for e in [*st["metrics"], *st["plots"]])
    columns = {ACCURACY_TABLE: exports.ACCURACY_COLUMNS, HISTORY_TABLE: ["term", "arm", "epoch", "value"]}
    for entry in dvc["plots"]:
        (title, spec), = entry.items()
        (path, field), = spec["y"].items()
        name = Path(path).name
        assert re.fullmatch(r"results/\$\{(default|robustness)\.profile\}/tables/[a-z_]+\.csv", path), title
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
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"vars": [{"default": {"profile": "default"},
                                                                 "robustness": {"profile": "robustness"}}],
                                                        "plots": dvc["plots"]}))
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


@pytest.mark.skipif(shutil.which("git") is None, reason="dvc needs git")
def test_dvc_metrics_show_fits_one_screen(analyzed: tuple[Path, dict], tmp_path: Path) -> None:
    """The real `dvc metrics show` on dvc.yaml's metrics declaration and a profile with every headline
    cell (semi-supervised ones included): a row per cell, six columns at most, one screen."""
    root, _ = analyzed
    shutil.copytree(root / METRICS_DIR, tmp_path / "results" / "default" / METRICS_DIR)
    (tmp_path / ".dvc").mkdir()
    (tmp_path / ".dvc" / "config").write_text("[core]\n    analytics = false\n")
    metrics = _stage(yaml.safe_load((REPO / "dvc.yaml").read_text()), "analyze")["metrics"]
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"vars": [{"default": {"profile": "default"}}],
                                                        "stages": {"analyze": {"cmd": "true", "metrics": metrics}}}))
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    out = subprocess.run([sys.executable, "-m", "dvc", "metrics", "show"], cwd=tmp_path,
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0].split() == ["Path", "ci_high", "ci_low", "mean", "supported", "tested"]
    assert len(out) - 1 == len(read_metrics(root)) <= 40  # a row per file
    assert max(map(len, out)) <= 160, max(map(len, out))
    svmax = next(line for line in out if line.startswith("results/default/metrics/linear_top1/svmax.json"))
    assert cell(dict(zip(["ci_high", "ci_low", "mean"], map(float, svmax.split()[1:4]), strict=True))) == \
        cell(read_metrics(root)["linear_top1/svmax.json"])
