"""The analysis on a synthetic results directory with known numbers, failures and gaps."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from embreg.analysis.aggregate import fmt_mean_std, load_results, mean_std, sweep_points
from embreg.analysis.plots import layer_matrix, loss_frame, mean_spectrum
from embreg.analysis.report import analyze

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SUPERSCRIPT = "⁰¹²³⁴⁵⁶⁷⁸⁹"
SEEDS = [0, 1]
ABLATIONS = {
    "anticollapse": {"title": "A. Anti-collapse term: SVMax vs VICReg's variance term", "question": "Which term?",
                     "arms": ["inv_only", "vicreg_nocov", "var_l2", "svmax"],
                     "sweeps": [("var_l2", "objective.variance"), ("svmax", "objective.svmax")]},
    "covariance": {"title": "B. VICReg with and without its covariance term", "question": "What does cov add?",
                   "arms": ["vicreg", "vicreg_nocov", "inv_only"], "sweeps": [("vicreg", "objective.covariance")]},
    "layers": {"title": "C. Last layer vs every layer", "question": "At what cost?",
               "arms": ["vicreg", "vicreg_all", "svmax", "svmax_all"], "sweeps": []},
}
# run_id -> per seed: (linear top-1, projector RankMe, s/step) for a finished seed, or (state, error)
RUNS: dict[str, dict[int, tuple]] = {
    "random_init": {0: (10.0, 5.0, None), 1: (12.0, 7.0, None)},
    "supervised": {0: (90.0, 100.0, 0.1), 1: (92.0, 102.0, 0.1)},
    "inv_only": {0: (20.0, 1.2, 0.1), 1: (22.0, 1.4, 0.1)},
    "vicreg_nocov": {0: (70.0, 50.0, 0.1), 1: (72.0, 52.0, 0.1)},
    "var_l2": {0: (78.0, 60.0, 0.1), 1: ("failed", "RuntimeError: CUDA out of memory\nTraceback ...")},
    "svmax": {0: (80.0, 300.0, 0.2), 1: (82.0, 310.0, 0.2)},
    "vicreg": {0: (84.0, 500.0, 0.1), 1: (86.0, 524.0, 0.1)},
    "vicreg_all": {0: (83.0, 400.0, 0.3)},  # seed 1 missing: no directory at all
    "svmax_all": {0: ("diverged", "loss is NaN at step 12"), 1: ("diverged", "loss is NaN at step 9")},
    "var_l2@variance=0.1": {0: (60.0, 10.0, 0.1), 1: (62.0, 12.0, 0.1)},
    "var_l2@variance=10.0": {0: (75.0, 70.0, 0.1), 1: (77.0, 72.0, 0.1)},
    "svmax@svmax=0.1": {0: (50.0, 20.0, 0.2), 1: (54.0, 22.0, 0.2)},
    # svmax@svmax=10.0: never ran
    "vicreg@covariance=0.1": {0: (80.0, 450.0, 0.1), 1: (80.0, 450.0, 0.1)},
    "vicreg@covariance=10.0": {0: (81.0, 480.0, 0.1), 1: (83.0, 482.0, 0.1)},
}
BASE_COEF = {"var_l2": ("variance", 1.0), "svmax": ("svmax", 1.0), "vicreg": ("covariance", 1.0)}


def make_metrics(run_id: str, seed: int, top1: float, rankme: float, sec: float | None) -> dict[str, Any]:
    """A metrics.json with known numbers; the untrained baseline lacks semi and cost keys."""
    def emb(score: float, rank: float, dim: int) -> dict[str, float]:
        return {"s_mu": 0.1 + 0.8 * score, "s_mu_lower": 0.1, "s_mu_upper": 0.9, "s_mu_score": score,
                "rankme": rank, "frac_dead_dims": 0.0, "mean_abs_corr": 0.05, "dim": dim}

    score = min(rankme / 512, 1.0)
    m: dict[str, Any] = {"run_id": run_id, "arm": run_id.split("@")[0], "seed": seed, "linear_top1": top1,
                         "linear_top5": top1 + 10, "knn20_top1": top1 - 1, "knn200_top1": top1 - 2,
                         "pretrain_seconds": 100.0, "eval_seconds": 10.0,
                         "collapse": {"layer1": emb(0.9, 30.0, 64), "layer2": emb(0.8, 60.0, 128),
                                      "layer3": emb(0.7, 100.0, 256), "backbone": emb(0.6, 200.0, 512),
                                      "projector": emb(score, rankme, 512)}}
    if sec is not None:
        m.update({f"semi_{p}pct_top{k}": top1 - d + k for p, d in (("1", 20), ("10", 5)) for k in (1, 5)})
        m.update({"steps": 100, "sec_per_step": sec, "images_per_sec": 256 / sec, "peak_memory_mb": 1000.0})
    return m


def write_run(root: Path, run_id: str, seed: int, spec: tuple) -> str:
    """One seed directory in the training code's layout; returns its state."""
    rd = root / "runs" / run_id / f"seed{seed}"
    rd.mkdir(parents=True)
    arm = run_id.split("@")[0]
    objective = {"name": arm, "kind": "untrained" if arm == "random_init" else "ssl",
                 "variance": 25.0, "covariance": 0.0, "svmax": 0.0}
    if arm in BASE_COEF:
        key, base = BASE_COEF[arm]
        objective[key] = float(run_id.split("=")[1]) if "@" in run_id else base
    (rd / "config.yaml").write_text(yaml.safe_dump({"objective": objective, "pretrain": {"epochs": 2}}))
    state, error = ("done", None) if isinstance(spec[0], float) else spec
    (rd / "status.json").write_text(json.dumps({"run_id": run_id, "arm": arm, "seed": seed, "state": state,
                                                "error": error, "seconds": 12.0}))
    if state == "done":
        top1, rankme, sec = spec
        (rd / "metrics.json").write_text(json.dumps(make_metrics(run_id, seed, top1, rankme, sec)))
        spectra = {e: [1.0, 0.5 + 0.1 * seed, 0.25] for e in ("backbone", "projector", "layer1")}
        (rd / "spectra.json").write_text(json.dumps(spectra))
        if arm == "supervised":
            hist = [{"epoch": e, "lr": 0.1, "loss": 3.0 - e, "cross_entropy": 3.0 - e} for e in (1, 2)]
        elif arm != "random_init":
            hist = [{"epoch": e, "lr": 0.1, "loss": 3.0 - e, "invariance": 1.0 / e + seed, "variance": 0.5,
                     "covariance": 0.1, "svmax": 0.3} for e in (1, 2)]
            (rd / "history.json").write_text(json.dumps(hist))
    return state


def build_results(tmp_path: Path) -> Path:
    """A results dir with every case: failed, diverged, a missing seed, a missing sweep run."""
    states = {rid: {str(s): write_run(tmp_path, rid, s, spec) for s, spec in seeds.items()}
              for rid, seeds in RUNS.items()}
    states["vicreg_all"]["1"] = "missing"
    states["svmax@svmax=10.0"] = {"0": "missing", "1": "missing"}
    ablations = {}
    for name, a in ABLATIONS.items():
        sweeps = [{"arm": arm, "key": key, "values": [0.1, 10.0],
                   "runs": [f"{arm}@{key.split('.')[-1]}={v}" for v in (0.1, 10.0)]} for arm, key in a["sweeps"]]
        ablations[name] = {"title": a["title"], "question": a["question"], "arms": a["arms"],
                           "baselines": ["random_init", "supervised"], "seeds": SEEDS, "sweeps": sweeps}
    manifest = {"profile": "default", "ablations": ablations, "runs": states}
    (tmp_path / "runs" / "manifest.json").write_text(json.dumps(manifest))
    return tmp_path


@pytest.fixture
def results_dir(tmp_path: Path) -> Path:
    return build_results(tmp_path)


@pytest.fixture(scope="module")
def analyzed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """Analysed once for the read-only tests (drawing the plots takes seconds)."""
    root = build_results(tmp_path_factory.mktemp("results"))
    return root, analyze(root)


def read_table(root: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(root / "tables" / f"{name}.csv", dtype=str, keep_default_na=False)


def row(df: pd.DataFrame, method: str) -> pd.Series:
    """The row whose method cell is ``method`` with or without a footnote marker."""
    hits = df[df["method"].str.rstrip(SUPERSCRIPT) == method]
    assert len(hits) == 1, f"{method} rows: {len(hits)}"
    return hits.iloc[0]


def footnote(md: str, cell: str) -> str:
    """The footnote text the marker at the end of ``cell`` refers to."""
    marker = re.search(f"[{SUPERSCRIPT}]+$", cell)
    assert marker, f"no footnote marker in {cell!r}"
    line = re.search(rf"^{marker.group(0)} (.*)$", md, flags=re.M)
    assert line, f"footnote {marker.group(0)} not found"
    return line.group(1)


def test_mean_std_format() -> None:
    assert fmt_mean_std([80.0, 82.0]) == "81.0 ± 1.4"
    assert fmt_mean_std([78.0]) == "78.0"
    assert fmt_mean_std([]) == "—"
    assert fmt_mean_std([0.5, 0.52], 3) == "0.510 ± 0.014"
    assert mean_std([1.0, float("nan"), 3.0])[::2] == (2.0, 2)


def test_main_table_numbers_and_marks(analyzed: tuple[Path, dict]) -> None:
    root, _ = analyzed
    df = read_table(root, "main")
    md = (root / "tables" / "main.md").read_text()
    assert list(df.columns) == ["method", "linear top-1", "top-5", "1% top-1", "top-5.1", "10% top-1", "top-5.2", "n"]
    assert [m.rstrip(SUPERSCRIPT) for m in df["method"]][:2] == ["random_init", "supervised"]
    svmax = row(df, "svmax")
    assert (svmax["method"], svmax["linear top-1"], svmax["top-5"], svmax["n"]) == ("svmax", "81.0 ± 1.4", "91.0 ± 1.4", "2")
    assert svmax["1% top-1"] == "62.0 ± 1.4" and svmax["10% top-1"] == "77.0 ± 1.4"
    var_l2 = row(df, "var_l2")  # one failed seed: the other seed's value, the row marked
    assert (var_l2["linear top-1"], var_l2["n"]) == ("78.0", "1")
    assert "seed 1 failed (RuntimeError: CUDA out of memory)" in footnote(md, var_l2["method"])
    diverged = row(df, "svmax_all")
    assert diverged["linear top-1"].startswith("—") and diverged["n"] == "0"
    note = footnote(md, diverged["linear top-1"])
    assert "seed 0 diverged (loss is NaN at step 12)" in note and "0 of 2 seeds finished" in note
    assert "seed 1 missing" in footnote(md, row(df, "vicreg_all")["method"])
    rand = row(df, "random_init")
    assert rand["linear top-1"] == "11.0 ± 1.4" and rand["1% top-1"].startswith("—")
    assert "by design" in footnote(md, rand["1% top-1"]) and "supervised" in footnote(md, rand["1% top-1"])


def test_ablation_tables(analyzed: tuple[Path, dict]) -> None:
    root, _ = analyzed
    anti, layers = read_table(root, "anticollapse"), read_table(root, "layers")
    assert [m.rstrip(SUPERSCRIPT) for m in anti["method"]] == ["random_init", "supervised", "inv_only",
                                                               "vicreg_nocov", "var_l2", "svmax"]
    assert "s/step" not in anti.columns and "s/step" in layers.columns
    inv = row(anti, "inv_only")
    assert (inv["kNN-20 top-1"], inv["projector RankMe"]) == ("20.0 ± 1.4", "1.3 ± 0.1")
    assert row(layers, "svmax")["s/step"] == "0.2000 ± 0.0000"
    assert row(layers, "random_init")["s/step"].startswith("—")
    tex = (root / "tables" / "layers.tex").read_text()
    assert r"svmax\_all" in tex and r"$\pm$" in tex and r"\textsuperscript{" in tex and "—" not in tex


def test_collapse_cost_sensitivity(analyzed: tuple[Path, dict]) -> None:
    root, _ = analyzed
    col = read_table(root, "collapse")
    vic = col[(col["method"] == "vicreg") & (col["embedding"] == "projector")].iloc[0]
    # scores 500/512 and 524/512 capped at 1: s_mu = 0.1 + 0.8 * score = 0.88125, 0.9
    assert vic["s_mu [L, U]"] == "0.891 ± 0.013 [0.100, 0.900]"
    assert (vic["RankMe"], vic["dim"], vic["n"]) == ("512.0 ± 17.0", "512", "2")
    cost = read_table(root, "cost")
    assert row(cost, "svmax")["s/step ÷ vicreg"] == "2.00" and row(cost, "vicreg")["s/step ÷ vicreg"] == "1.00"
    assert row(cost, "svmax")["images/s"] == "1280 ± 0"
    sens = read_table(root, "sensitivity")
    sv = sens[sens["arm"] == "svmax"]
    assert list(sv["value"]) == ["0.1", "1 (base)", "10"]
    assert list(sv["linear top-1"])[:2] == ["52.0 ± 2.8", "81.0 ± 1.4"] and sv["linear top-1"].iloc[2].startswith("—")
    assert list(sens[sens["arm"] == "vicreg"]["projector RankMe"]) == ["450.0 ± 0.0", "512.0 ± 17.0", "481.0 ± 1.4"]
    assert len(sens) == 9


def test_summary_json(analyzed: tuple[Path, dict]) -> None:
    root, summary = analyzed
    on_disk = json.loads((root / "summary.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert on_disk == summary
    assert summary["svmax"] == {"linear_top1": 81.0, "semi_1pct_top1": 62.0, "semi_10pct_top1": 77.0,
                                "projector_rankme": 305.0, "n": 2}
    assert summary["inv_only"]["projector_rankme"] == 1.3
    assert summary["svmax_all"] == {"linear_top1": None, "semi_1pct_top1": None, "semi_10pct_top1": None,
                                    "projector_rankme": None, "n": 0}
    assert summary["random_init"]["semi_1pct_top1"] is None and summary["random_init"]["linear_top1"] == 11.0
    assert summary["var_l2"]["n"] == 1 and "var_l2@variance=0.1" not in summary


def test_files_and_pngs(analyzed: tuple[Path, dict]) -> None:
    root, _ = analyzed
    for name in ("main", "anticollapse", "covariance", "layers", "collapse", "cost", "sensitivity"):
        for ext in ("md", "csv", "tex"):
            assert (root / "tables" / f"{name}.{ext}").stat().st_size > 50
    pngs = ["anticollapse_bars", "covariance_bars", "layers_bars", "sensitivity", "loss_terms",
            "layer_collapse_heatmap", "spectra"]
    import matplotlib.image as mpimg

    for name in pngs:
        path = root / "plots" / f"{name}.png"
        assert path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 5000
        h, w = mpimg.imread(path).shape[:2]
        assert h >= 200 and w >= 400


def test_report(analyzed: tuple[Path, dict]) -> None:
    root, _ = analyzed
    report = (root / "REPORT.md").read_text()
    assert report.startswith("# ") and "`default`" in report.splitlines()[0]
    for a in ABLATIONS.values():
        assert f"## {a['title']}" in report and a["question"] in report
    links = re.findall(r"\]\(([^)]+)\)", report)
    assert {f"plots/{n}_bars.png" for n in ABLATIONS} <= set(links) and "plots/spectra.png" in links
    assert all((root / link).is_file() for link in links)
    assert "could not be drawn" not in report
    assert "linear top-1, highest mean first: supervised 91.0 (n=2), vicreg 85.0 (n=2)" in report
    assert "projector RankMe: random_init 6.0, supervised 101.0, inv_only 1.3" in report
    assert "s/step relative to vicreg: vicreg_all 3.00×, svmax 2.00×" in report
    assert "| svmax_all | 0 | diverged | 12 | loss is NaN at step 12 |" in report
    assert "| svmax@svmax=10.0 | 1 | missing |" in report
    assert "seed 1 failed (RuntimeError: CUDA out of memory)" in report  # a footnote, error's first line only
    assert "Traceback" not in report


def test_plot_data(results_dir: Path) -> None:
    res = load_results(results_dir)
    loss = loss_frame(res, ["svmax", "supervised"])
    inv = loss[(loss["term"] == "invariance") & (loss["epoch"] == 1)]
    assert sorted(inv["value"]) == [1.0, 2.0] and set(loss["arm"]) == {"svmax"}  # supervised: no terms
    assert set(loss["term"]) == {"invariance", "variance", "covariance", "svmax"}
    score = layer_matrix(res, lambda mt, lay: mt.get(f"{lay}_s_mu_score", math.nan))
    assert list(score.columns) == ["layer1", "layer2", "layer3", "backbone", "projector"]
    assert "svmax_all" not in score.index and score.loc["inv_only", "layer3"] == pytest.approx(0.7)
    assert mean_spectrum(res, "vicreg", "projector").tolist() == pytest.approx([1.0, 0.55, 0.25])
    assert mean_spectrum(res, "svmax_all", "projector") is None
    points = sweep_points(res, res.manifest["ablations"]["anticollapse"]["sweeps"][1])
    assert [(p.value, p.run_id, p.is_base) for p in points] == [
        (0.1, "svmax@svmax=0.1", False), (1.0, "svmax", True), (10.0, "svmax@svmax=10.0", False)]


def test_broken_inputs_never_crash(results_dir: Path) -> None:
    """Unreadable metrics, no manifest, and an empty directory still give a report."""
    (results_dir / "runs" / "svmax" / "seed1" / "metrics.json").write_text("{not json")
    summary = analyze(results_dir)
    assert summary["svmax"] == {**summary["svmax"], "linear_top1": 80.0, "n": 1}
    assert "unreadable metrics.json" in (results_dir / "tables" / "main.md").read_text()
    manifest_path = results_dir / "runs" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["runs"]["vicreg"]["1"] = "stale"  # finished under an older config: not counted
    manifest_path.write_text(json.dumps(manifest))
    assert analyze(results_dir)["vicreg"] == {"linear_top1": 84.0, "semi_1pct_top1": 65.0, "semi_10pct_top1": 80.0,
                                              "projector_rankme": 500.0, "n": 1}
    main = read_table(results_dir, "main")
    assert "seed 1 stale" in footnote((results_dir / "tables" / "main.md").read_text(), row(main, "vicreg")["method"])
    runs = pd.read_csv(results_dir / "tables" / "runs.csv")
    assert runs[(runs["run_id"] == "svmax") & (runs["seed"] == 0)]["linear_top1"].tolist() == [80.0]
    manifest_path.unlink()
    summary = analyze(results_dir)
    assert summary["vicreg"]["linear_top1"] == 85.0 and "svmax@svmax=0.1" not in summary
    assert "discovered from the run directories" in (results_dir / "REPORT.md").read_text()


def test_empty_results_dir(tmp_path: Path) -> None:
    assert analyze(tmp_path) == {}
    assert (tmp_path / "plots" / "spectra.png").read_bytes()[:8] == PNG_MAGIC
    assert "Seed runs by state: none." in (tmp_path / "REPORT.md").read_text()


def test_sweep_points_expect_only_the_sweep_seeds(tmp_path: Path) -> None:
    """A profile that runs sensitivity points on fewer seeds: no 'missing seed' marks for them."""
    from embreg.analysis.aggregate import expected_seeds

    manifest = {"ablations": {"a": {"arms": ["svmax"], "baselines": [], "seeds": [0, 1], "sweep_seeds": [0],
                                    "sweeps": [{"arm": "svmax", "key": "objective.svmax", "values": [0.1],
                                                "runs": ["svmax@svmax=0.1"]}]}},
                "runs": {"svmax": {"0": "done", "1": "done"}, "svmax@svmax=0.1": {"0": "done"}}}
    assert expected_seeds(manifest) == {"svmax": [0, 1], "svmax@svmax=0.1": [0]}
    del manifest["ablations"]["a"]["sweep_seeds"]  # older manifests: the ablation's seeds
    assert expected_seeds(manifest)["svmax@svmax=0.1"] == [0, 1]
