"""The analysis on a synthetic results directory (tests/analysis/conftest.py) with known numbers."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from embreg.analysis.accuracy_plots import accuracy_plot
from embreg.analysis.aggregate import load_results, mean_std, sweep_points
from embreg.analysis.collapse import random_batch_score, svmax_bounds
from embreg.analysis.collapse_plots import layer_matrix, mean_spectrum
from embreg.analysis.compare import ablation_pairs
from embreg.analysis.readme import BEGIN, END, block_in, splice
from embreg.analysis.report import analyze
from embreg.analysis.stats import holm
from embreg.analysis.training_plots import loss_frame
from tests.analysis.conftest import LAYER_SWEEP, RUNS
from tests.analysis.helpers import SUPERSCRIPT, missing_from_summary

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def top1(run_id: str) -> list[float]:
    return [s[0] for s in RUNS[run_id].values() if isinstance(s[0], float)]


def ci_text(values: list[float], decimals: int = 1) -> str:
    """The expected cell, from scipy directly."""
    mean = float(np.mean(values))
    lo, hi = sps.t.interval(0.95, len(values) - 1, loc=mean, scale=sps.sem(values))
    return f"{mean:.{decimals}f} [{lo:.{decimals}f}, {hi:.{decimals}f}]"


def read_table(root: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(root / "tables" / f"{name}.csv", dtype=str, keep_default_na=False)


def row(df: pd.DataFrame, method: str) -> pd.Series:
    """The row whose method cell starts with ``method`` (a footnote marker or budget may follow)."""
    hits = df[df["method"].str.rstrip(SUPERSCRIPT).str.split(" ").str[0] == method]
    assert len(hits) == 1, f"{method} rows: {len(hits)}"
    return hits.iloc[0]


def footnote(md: str, cell: str) -> str:
    """The footnote text the marker at the end of ``cell`` refers to."""
    marker = re.search(f"[{SUPERSCRIPT}]+", cell)
    assert marker, f"no footnote marker in {cell!r}"
    line = re.search(rf"^{marker.group(0)} (.*)$", md, flags=re.M)
    assert line, f"footnote {marker.group(0)} not found"
    return line.group(1)


def test_main_table_cells_and_references(analyzed: tuple[Path, dict]) -> None:
    root, _ = analyzed
    df, md = read_table(root, "main"), (root / "tables" / "main.md").read_text()
    assert list(df.columns) == ["method", "linear top-1", "Δ pixels (linear)", "Δ random_init (linear)", "top-5",
                                "kNN-20 top-1", "10% top-1", "top-5.1", "1% top-1", "top-5.2", "n"]
    assert "top-5" not in md.splitlines()[0]  # CSV only
    assert list(df["method"][:3]) == ["pixels", "random_init", "supervised (300 steps; SSL arms 75)"]
    svmax = row(df, "svmax")
    assert svmax["linear top-1"] == ci_text(top1("svmax")) and svmax["n"] == "3"
    assert svmax["10% top-1"] == ci_text([v - 5 for v in top1("svmax")])
    # Δ columns: Welch difference and interval, as scipy computes them
    ref = sps.ttest_ind(top1("svmax"), top1("pixels"), equal_var=False)
    ci = ref.confidence_interval(0.95)
    eff = np.mean(top1("svmax")) - np.mean(top1("pixels"))
    assert svmax["Δ pixels (linear)"] == f"{eff:+.1f} [{ci.low:.1f}, {ci.high:.1f}]"
    assert row(df, "pixels")["Δ pixels (linear)"] == "(reference)"
    assert row(df, "random_init")["Δ random_init (linear)"] == "(reference)"


def test_by_design_and_failed_cells(analyzed: tuple[Path, dict]) -> None:
    root, _ = analyzed
    df, md = read_table(root, "main"), (root / "tables" / "main.md").read_text()
    pixels, rand, inv = row(df, "pixels"), row(df, "random_init"), row(df, "inv_only")
    assert pixels["10% top-1"].startswith("— (by design)") and "raw pixels" in footnote(md, pixels["10% top-1"])
    assert pixels["kNN-20 top-1"] == ci_text([v - 1 for v in top1("pixels")])
    assert "supervised baseline" in footnote(md, rand["1% top-1"])
    # fine-tuning off in its config: by design, never a number
    assert inv["1% top-1"].startswith("— (by design)")
    assert "switches semi-supervised evaluation off" in footnote(md, inv["1% top-1"])
    var_l2 = row(df, "var_l2")  # one failed seed: the other two, the row marked
    assert (var_l2["linear top-1"], var_l2["n"]) == (ci_text(top1("var_l2")), "2")
    assert "seed 2 failed (RuntimeError: out of memory)" in footnote(md, var_l2["method"])
    diverged = row(df, "svmax_all")
    assert diverged["linear top-1"].startswith("—") and "by design" not in diverged["linear top-1"]
    note = footnote(md, diverged["linear top-1"])
    assert "seed 0 diverged (loss is NaN at step 9)" in note and "0 of 3 seeds finished" in note
    assert "seed 2 missing" in footnote(md, row(df, "vicreg_all")["method"])


def test_semi_columns_all_empty_by_design_are_left_out_with_a_remark(analyzed: tuple[Path, dict]) -> None:
    """Rows that all lack fine-tuning by design (references, an arm with it switched off) give no
    semi-supervised columns, and one sentence says so; one failed row keeps them (its cell says why)."""
    from embreg.analysis.tables import ACCURACY_COLUMNS, metric_table

    res = load_results(analyzed[0])
    table = metric_table(res, "t", "t", ["pixels", "random_init", "inv_only"], ACCURACY_COLUMNS)
    assert list(table.frame.columns) == ["method", "linear top-1", "top-5", "kNN-20 top-1", "n"]
    assert "No semi-supervised columns: no run here fine-tunes, by design" in table.markdown()
    assert not any("switches semi-supervised evaluation off" in t for t in table.notes.texts)
    for runs in (["pixels", "inv_only", "svmax_all"], ["inv_only", "svmax"]):  # diverged; fine-tuned
        table = metric_table(res, "t", "t", runs, ACCURACY_COLUMNS)
        assert "10% top-1" in table.frame.columns and not table.remark, runs


def test_significance_marks_and_holm(analyzed: tuple[Path, dict]) -> None:
    root, summary = analyzed
    anti, tests = read_table(root, "anticollapse"), read_table(root, "anticollapse_tests")
    assert row(anti, "svmax")["linear top-1"].endswith("†") and row(anti, "svmax")["kNN-20 top-1"].endswith("†")
    assert not any(c.endswith("†") for c in row(anti, "var_l2"))
    assert not any(c.endswith("†") for c in row(anti, "vicreg_nocov"))  # the reference arm itself
    versus = "linear top-1 vs reference arm"
    assert row(anti, "svmax")[versus].startswith(f"vs vicreg_nocov: {80.5 - np.mean(top1('vicreg_nocov')):+.1f}, p ")
    assert row(anti, "svmax")[versus].endswith("†") and not row(anti, "var_l2")[versus].endswith("†")
    assert (row(anti, "vicreg_nocov")[versus], row(anti, "pixels")[versus]) == ("(reference arm)", "(not compared)")
    # the family: svmax / var_l2 on 4 metrics, inv_only on 2 (its fine-tuning is off): 10 tests
    assert list(tests["comparison"]).count("inv_only vs vicreg_nocov") == 2 and len(tests) == 10
    pairs = [("svmax", 0), ("var_l2", 0), ("inv_only", 0)]
    shifts = {"linear_top1": 0, "knn20_top1": 1, "semi_10pct_top1": 5, "semi_1pct_top1": 20}
    ps, keys = [], []
    for arm, _ in pairs:
        for key, shift in shifts.items():
            if arm == "inv_only" and key.startswith("semi"):
                continue
            a = [v - shift for v in top1(arm)]
            b = [v - shift for v in top1("vicreg_nocov")]
            ps.append(sps.ttest_ind(a, b, equal_var=False).pvalue)
            keys.append((arm, key))
    adjusted = holm(ps)
    m = len(ps)
    # Holm by hand for the smallest p: m * p
    assert min(adjusted) == pytest.approx(min(1.0, m * min(ps)))
    comps = summary["comparisons"]["anticollapse"]
    for (arm, key), p, p_adj in zip(keys, ps, adjusted, strict=True):
        got = comps[f"{arm} vs vicreg_nocov"][key]
        assert (got["p"], got["p_holm"]) == (pytest.approx(p), pytest.approx(p_adj))
        assert got["significant"] == (p_adj < 0.05)
    assert comps["svmax vs vicreg_nocov"]["linear_top1"]["significant"] is True
    assert comps["var_l2 vs vicreg_nocov"]["linear_top1"]["significant"] is False
    svm = tests[(tests["comparison"] == "svmax vs vicreg_nocov") & (tests["metric"] == "linear top-1")].iloc[0]
    assert svm["significant"] == "yes" and svm["n"] == "3 vs 3"


def test_comparisons_from_conf_and_untestable(analyzed: tuple[Path, dict]) -> None:
    root, summary = analyzed
    cov = read_table(root, "covariance_tests")  # pairs from conf_ablation/covariance.yaml
    assert list(dict.fromkeys(cov["comparison"])) == ["vicreg_nocov vs vicreg", "inv_only vs vicreg"]
    layers, tests = read_table(root, "layers"), read_table(root, "layers_tests")
    assert LAYER_SWEEP in list(layers["method"].str.rstrip(SUPERSCRIPT))  # a compared sweep point is a row
    assert row(layers, LAYER_SWEEP)["10% top-1"].startswith("— (by design)")
    div = tests[tests["comparison"] == "svmax_all vs svmax"]
    assert len(div) == 4 and all(v.startswith("not testable") for v in div["significant"])
    one_seed = tests[tests["comparison"] == f"{LAYER_SWEEP} vs vicreg"]  # n = 1: effect, no test
    assert list(one_seed["metric"]) == ["linear top-1", "kNN-20 top-1"]
    assert one_seed.iloc[0]["effect [95% CI]"] == f"{77.0 - np.mean(top1('vicreg')):+.1f} [n/a]"
    assert summary["comparisons"]["layers"]["svmax_all vs svmax"]["linear_top1"]["p"] is None


def test_ablation_pairs_defaults_and_errors(tmp_path: Path) -> None:
    abl = {"arms": ["a", "b", "c"], "baselines": ["random_init"]}
    assert ablation_pairs("x", abl, tmp_path) == [("b", "a"), ("c", "a")]
    with pytest.raises(ValueError, match="unknown run 'zz'; valid: pixels, random_init, supervised, a, b, c"):
        ablation_pairs("x", {**abl, "comparisons": [["zz", "a"]]}, tmp_path)
    # a sweep point of a known arm that an older manifest lacks: accepted (its row is marked missing)
    assert ablation_pairs("x", {**abl, "comparisons": [["c@layer_weight=0.2", "c"]]}) == [("c@layer_weight=0.2", "c")]
    (tmp_path / "x.yaml").write_text("comparisons: [[c, b]]\n")  # no comparisons in the manifest: conf/
    assert ablation_pairs("x", abl, tmp_path) == [("c", "b")]
    with pytest.raises(ValueError, match=r"\[arm, reference\]"):
        ablation_pairs("x", {**abl, "comparisons": [["a"]]}, tmp_path)


def test_collapse_tables_and_regime(analyzed: tuple[Path, dict]) -> None:
    root, summary = analyzed
    col = read_table(root, "anticollapse_collapse")
    assert "pixels" not in set(col["method"])
    proj = col[(col["method"] == "svmax") & (col["embedding"] == "projector")].iloc[0]
    assert proj["RankMe"] == ci_text([130.0, 135.0, 140.0]) + "†"
    assert (proj["L"], proj["U"], proj["dim"], proj["n"]) == ("0.100", "3.000", "1024", "3")
    assert list(col[col["method"] == "svmax"]["embedding"]) == ["layer1", "layer2", "layer3", "backbone", "projector"]
    assert summary["comparisons"]["anticollapse_collapse"]["svmax vs vicreg_nocov"]["projector_rankme"]["significant"]
    # the regime: a random Gaussian batch, computed here independently
    x = np.random.default_rng(0).standard_normal((64, 1024))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    lower, upper = svmax_bounds(64, 1024)
    assert (lower, upper) == (pytest.approx(8 / 64), pytest.approx(1.0))  # k = min(b, d) = 64
    expected = (np.linalg.svd(x, compute_uv=False).mean() - lower) / (upper - lower)
    assert random_batch_score(64, 1024) == pytest.approx(expected) and round(expected, 3) == 0.991
    regime = read_table(root, "regime")
    assert set(regime[regime["run"] == "vicreg_all"]["embedding"]) == {"layer1", "layer2", "layer3", "backbone",
                                                                       "projector"}
    assert "inv_only" not in set(regime["run"])  # no regularizer, no regime
    assert summary["regime"]["svmax"]["projector"] == {"b": 64, "d": 1024, "regime": "b < d",
                                                       "random_score": pytest.approx(expected)}


def test_summary_json(analyzed: tuple[Path, dict]) -> None:
    root, summary = analyzed
    on_disk = json.loads((root / "summary.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert on_disk == summary
    cell = summary["arms"]["svmax"]["metrics"]["linear_top1"]
    lo, hi = sps.t.interval(0.95, 2, loc=np.mean(top1("svmax")), scale=sps.sem(top1("svmax")))
    assert cell == {"mean": pytest.approx(80.5), "ci_low": pytest.approx(lo), "ci_high": pytest.approx(hi), "n": 3,
                    "std": pytest.approx(0.5)}
    assert summary["arms"]["svmax_all"]["n"] == 0 and summary["arms"]["svmax_all"]["metrics"] == {}
    single = summary["arms"]["svmax@svmax=0.1"]["metrics"]["linear_top1"]
    assert single["n"] == 1 and single["ci_low"] is None
    assert summary["arms"]["supervised"]["budget_steps"] == 300
    assert summary["references"]["pixels"]["svmax"]["effect"] == pytest.approx(80.5 - 81.8)
    assert summary["resolution"]["seeds"] == 3


def test_report_findings_and_readme_block(analyzed: tuple[Path, dict]) -> None:
    root, summary = analyzed
    report = (root / "REPORT.md").read_text()
    comp = summary["comparisons"]["anticollapse"]["svmax vs vicreg_nocov"]["linear_top1"]
    line = (f"- `svmax` vs `vicreg_nocov`, `linear top-1`: {comp['effect']:+.1f} [{comp['ci_low']:.1f}, "
            f"{comp['ci_high']:.1f}] points, p (Holm) = ")
    assert line in report
    assert "not resolved at this scale: `var_l2` vs `vicreg_nocov` (`linear top-1`" in report
    assert "`pretrain.supervised_epochs`: 20" in report and "false (inv_only, " in report  # protocol
    links = re.findall(r"\]\(([^)]+)\)", report)
    assert all((root / link).is_file() for link in links) and "plots/layers_collapse.png" in links
    cols = 0  # every table row has its header's number of cells (no stray pipe inside a cell)
    for text in report.splitlines():
        if not text.startswith("|"):
            cols = 0
            continue
        cells = len(re.findall(r"(?<!\\)\|", text))
        cols = cols or cells
        assert cells == cols, text
    assert "could not be drawn" not in report and "Traceback" not in report
    block = (root / "README_results.md").read_text()
    assert "| svmax " in block and line in block
    assert missing_from_summary(block, summary) == []
    readme = f"intro\n{BEGIN}\nold table\n{END}\nrest\n"
    spliced = splice(readme, block)
    assert block_in(spliced) == block and spliced.startswith("intro\n") and spliced.endswith(f"{END}\nrest\n")
    with pytest.raises(ValueError, match="results:begin"):
        splice("no markers", block)
    assert missing_from_summary(block.replace("(reference)", "12345.6", 1), summary) == ["12345.6"]


def test_files_and_pngs(analyzed: tuple[Path, dict]) -> None:
    import matplotlib.image as mpimg

    root, _ = analyzed
    for name in ("main", "anticollapse", "anticollapse_tests", "layers_collapse", "regime", "cost", "sensitivity"):
        for ext in ("md", "csv", "tex"):
            assert (root / "tables" / f"{name}.{ext}").stat().st_size > 50
    tex = (root / "tables" / "anticollapse.tex").read_text()
    assert r"$^\dagger$" in tex and r"$\Delta$" in tex and "—" not in tex
    for name in ("headline", "anticollapse_accuracy", "layers_collapse", "sensitivity", "loss_terms",
                 "layer_collapse_heatmap", "spectra"):
        path = root / "plots" / f"{name}.png"
        assert path.read_bytes()[:8] == PNG_MAGIC and mpimg.imread(path).shape[1] >= 400
    # every figure fits a README or a laptop screen at its saved resolution
    widths = {p.name: mpimg.imread(p).shape[1] for p in (root / "plots").glob("*.png")}
    assert widths and max(widths.values()) <= 1600, widths


def test_accuracy_plot_is_a_function_of_the_results(results_dir: tuple[Path, Path], tmp_path: Path) -> None:
    """The seeds' dots are jittered by a private generator: re-running the analysis on the same runs
    writes the same bytes (and leaves numpy's global generator where it was)."""
    res = load_results(results_dir[0])
    drawn = []
    for global_seed in (1, 2):
        np.random.seed(global_seed)
        path = accuracy_plot(res, "anticollapse", ["svmax", "vicreg"], tmp_path / f"acc{global_seed}.png")
        drawn.append((path.read_bytes(), np.random.random()))
    assert drawn[0][0] == drawn[1][0]
    np.random.seed(2)
    assert drawn[1][1] == np.random.random()


def test_cost_and_sensitivity(analyzed: tuple[Path, dict]) -> None:
    root, _ = analyzed
    cost = read_table(root, "cost")
    assert row(cost, "svmax")["s/step ÷ vicreg"] == "1.00" and row(cost, "supervised")["s/step ÷ vicreg"] == "0.50"
    assert row(cost, "pixels")["s/step"].startswith("— (by design)")
    sens = read_table(root, "sensitivity")
    sv = sens[sens["arm"] == "svmax"]
    assert list(sv["value"]) == ["0.1", "1 (base)", "10"]
    assert list(sv["linear top-1"])[:2] == ["50.0 [n/a]", ci_text(top1("svmax"))]
    assert sv["linear top-1"].iloc[2].startswith("—")


def test_plot_data(results_dir: tuple[Path, Path]) -> None:
    res = load_results(results_dir[0])
    loss = loss_frame(res, ["svmax", "supervised"])
    assert set(loss["arm"]) == {"svmax"} and sorted(loss[(loss["term"] == "invariance") & (loss["epoch"] == 1)]
                                                    ["value"]) == [1.0, 2.0, 3.0]
    score = layer_matrix(res, lambda mt, lay: mt.get(f"{lay}_s_mu_score", math.nan))
    assert list(score.columns) == ["layer1", "layer2", "layer3", "backbone", "projector"]
    assert "svmax_all" not in score.index and "pixels" not in score.index
    assert mean_spectrum(res, "vicreg", "projector").tolist() == pytest.approx([1.0, 0.6, 0.25])
    points = sweep_points(res, res.manifest["ablations"]["anticollapse"]["sweeps"][1])
    assert [(p.value, p.run_id) for p in points] == [(0.1, "svmax@svmax=0.1"), (1.0, "svmax"), (10.0, "svmax@svmax=10.0")]
    assert mean_std([1.0, float("nan"), 3.0])[::2] == (2.0, 2)


def test_broken_inputs_never_crash(results_dir: tuple[Path, Path]) -> None:
    """Unreadable metrics, a stale seed and no manifest still give a report."""
    root, conf = results_dir
    (root / "runs" / "svmax" / "seed1" / "metrics.json").write_text("{not json")
    summary = analyze(root, conf)
    assert summary["arms"]["svmax"]["metrics"]["linear_top1"]["mean"] == pytest.approx(80.5) is not None
    assert summary["arms"]["svmax"]["n"] == 2
    assert "unreadable metrics.json" in (root / "tables" / "main.md").read_text()
    manifest_path = root / "runs" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["runs"]["vicreg"]["1"] = "stale"  # finished under an older config: not counted
    manifest_path.write_text(json.dumps(manifest))
    assert analyze(root, conf)["arms"]["vicreg"]["n"] == 2
    assert "seed 1 stale" in footnote((root / "tables" / "main.md").read_text(), row(read_table(root, "main"),
                                                                                     "vicreg")["method"])
    manifest_path.unlink()
    summary = analyze(root, conf)
    assert summary["arms"]["vicreg"]["metrics"]["linear_top1"]["mean"] == pytest.approx(79.0)
    assert "discovered from the run directories" in (root / "REPORT.md").read_text()


def test_empty_results_dir(tmp_path: Path) -> None:
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "collapse.md").write_text("a table an older analysis wrote")
    summary = analyze(tmp_path, tmp_path)
    assert not (tmp_path / "tables" / "collapse.md").exists()
    assert summary["comparisons"] == {} and summary["arms"]["pixels"]["n"] == 0
    assert (tmp_path / "plots" / "spectra.png").read_bytes()[:8] == PNG_MAGIC
    assert "Seed runs by state: none." in (tmp_path / "REPORT.md").read_text()


def test_sweep_points_expect_only_the_sweep_seeds() -> None:
    """A profile that runs sensitivity points on fewer seeds: no 'missing seed' marks for them."""
    from embreg.analysis.aggregate import expected_seeds

    manifest = {"ablations": {"a": {"arms": ["svmax"], "baselines": [], "seeds": [0, 1], "sweep_seeds": [0],
                                    "sweeps": [{"arm": "svmax", "key": "objective.terms.svmax", "values": [0.1],
                                                "runs": ["svmax@svmax=0.1"]}]}},
                "runs": {"svmax": {"0": "done", "1": "done"}, "svmax@svmax=0.1": {"0": "done"}}}
    assert expected_seeds(manifest) == {"svmax": [0, 1], "svmax@svmax=0.1": [0]}
    del manifest["ablations"]["a"]["sweep_seeds"]  # older manifests: the ablation's seeds
    assert expected_seeds(manifest)["svmax@svmax=0.1"] == [0, 1]


def test_findings_mark_borderline_claims_and_say_the_rule() -> None:
    from scipy import stats as sps

    from embreg.analysis.compare import Comparison, set_holm
    from embreg.analysis.findings import findings, method_note
    from embreg.analysis.stats import WelchTest

    def comp(arm: str, t: float) -> Comparison:  # two arms of three seeds: dof 4
        return Comparison("anticollapse", arm, "vicreg_nocov", "linear_top1", "linear top-1",
                          WelchTest(t, t - 1.0, t + 1.0, t, 4.0, float(2 * sps.t.sf(abs(t), 4.0)), 3, 3))

    near, firm, failing = comp("var_l2", 4.2), comp("svmax", 12.0), comp("inv_only", 1.0)
    set_holm([near, firm, failing])
    assert (near.significant, near.borderline) == (True, True)
    assert (firm.significant, firm.borderline) == (True, False)
    assert (failing.significant, failing.borderline) == (False, False)
    lines = findings([near, firm, failing])
    assert lines[0].startswith("`var_l2` vs `vicreg_nocov`") and lines[0].endswith("(borderline)")
    assert lines[1].startswith("`svmax` vs `vicreg_nocov`") and "borderline" not in lines[1]
    assert near.as_dict()["borderline"] is True
    assert "1 standard error closer to zero" in method_note() and "(borderline)" in method_note()
