"""The whole pipeline: `dvc repro` of the smoke profile in a temporary git + DVC copy of the
repository, on small Fashion-MNIST files written in the real idx format."""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import pytest

from embreg.analysis.exports import read_metrics
from tests.conftest import run_cmd as _sh

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def _rows(path: Path) -> dict[str, dict[str, str]]:
    with open(path) as f:
        rows = list(csv.DictReader(f))
    key = next(iter(rows[0]))
    return {r[key]: r for r in rows}


def test_tables_hold_every_arm_with_real_numbers(smoke_repo):
    res = smoke_repo / "results" / "smoke"
    main = _rows(res / "tables" / "main.csv")
    methods = {m.split("¹")[0].strip("*` ") for m in main}
    for arm in ("inv_only", "vicreg", "vicreg_nocov", "var_l2", "svmax", "vicreg_all", "svmax_all",
                "supervised", "random_init"):
        assert any(arm == m.split(" ")[0] for m in methods), (arm, methods)
    arms = json.loads((res / "summary.json").read_text())["arms"]
    for arm in ("inv_only", "vicreg", "svmax", "supervised", "random_init"):
        assert arms[arm]["n"] == 1, arm
        assert 0 <= arms[arm]["metrics"]["linear_top1"]["mean"] <= 100
    # the smoke profile fine-tunes only when asked (eval.semi_supervised=true): no semi-supervised cell
    assert not any(k.startswith("semi_") for arm in arms.values() for k in arm["metrics"])
    for name in ("anticollapse", "anticollapse_tests", "anticollapse_collapse", "covariance", "layers", "main",
                 "regime", "cost", "sensitivity"):
        for ext in ("md", "csv", "tex"):
            assert (res / "tables" / f"{name}.{ext}").stat().st_size > 0, (name, ext)
    sens = (res / "tables" / "sensitivity.csv").read_text()
    assert "svmax" in sens and "0.1" in sens and "10.0" in sens


def test_every_run_directory_is_complete(smoke_repo):
    runs = smoke_repo / "results" / "smoke" / "runs"
    manifest = json.loads((runs / "manifest.json").read_text())
    assert set(manifest["ablations"]) == {"anticollapse", "covariance", "layers"}
    assert "svmax@svmax=10.0" in manifest["runs"]
    for rid, seeds in manifest["runs"].items():
        for seed, state in seeds.items():
            assert state == "done", (rid, seed)
            rd = runs / rid / f"seed{seed}"
            # the raw-pixel reference has no network, so no embedding spectra
            for f in ("config.yaml", "status.json", "metrics.json", *(() if rid == "pixels" else ("spectra.json",))):
                assert (rd / f).is_file(), (rid, f)
    # the run shared by ablations A and B was trained once, into one directory
    assert len(list(runs.glob("vicreg_nocov/seed*"))) == 1


def test_report_and_plots(smoke_repo):
    res = smoke_repo / "results" / "smoke"
    report = (res / "REPORT.md").read_text()
    for title in ("A. Anti-collapse", "B. VICReg with and without", "C. Last layer vs every layer"):
        assert title in report
    for png in ("headline", "anticollapse_accuracy", "covariance_accuracy", "layers_accuracy", "anticollapse_collapse",
                "layers_collapse", "sensitivity", "loss_terms", "layer_collapse_heatmap", "spectra"):
        assert (res / "plots" / f"{png}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # DVC's metrics: the headline per arm, and the findings
    metrics = read_metrics(res)
    assert {"findings/accuracy.json", "linear_top1/svmax.json", "knn20_top1/vicreg.json"} <= set(metrics)
    assert set(metrics["linear_top1/svmax.json"]) == {"mean"}  # one seed: no interval


def test_repro_again_is_a_no_op_and_status_is_clean(smoke_repo):
    before = (smoke_repo / "results" / "smoke" / "runs" / "svmax" / "seed0" / "metrics.json").stat().st_mtime_ns
    out = _sh(["dvc", "repro", "analyze"], smoke_repo).stdout
    assert "didn't change" in out or "up to date" in out
    assert "up to date" in _sh(["dvc", "status", "analyze"], smoke_repo).stdout
    after = (smoke_repo / "results" / "smoke" / "runs" / "svmax" / "seed0" / "metrics.json").stat().st_mtime_ns
    assert before == after


def test_unknown_profile_fails_in_one_line_and_writes_nothing(smoke_repo, tmp_path):
    repo = tmp_path / "bad"
    shutil.copytree(smoke_repo, repo, ignore=shutil.ignore_patterns("results", "data", ".dvc/cache"))
    (repo / "params.yaml").write_text((repo / "params.yaml").read_text().replace("profile: smoke", "profile: huge"))
    res = _sh([sys.executable, "pipelines/prepare.py"], repo, check=False)
    assert res.returncode == 1
    valid = ", ".join(sorted(p.stem for p in (repo / "conf" / "profile").glob("*.yaml")))
    assert res.stderr.strip() == f"error: params.yaml: default.profile: unknown profile 'huge'; valid: {valid}"
    assert not (repo / "results").exists() and not (repo / "data").exists()  # checked before anything
