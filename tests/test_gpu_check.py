"""pipelines/gpu_check.py: its orchestration on the CPU (``--cpu-smoke``): exactly three flat
files (the JSON with every part, rewritten after each; the bench's JSON; one log archive), a
part stopped at its time limit recorded as such while the others run, a tests part where every
test was skipped counted as failed; the offline install from wheels; the runs' summary and the
grid's extrapolation; limits that fit five minutes."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "pipelines"))

import gpu_check  # noqa: E402


def probe_wheel(dir_: Path) -> Path:
    """A minimal pure-Python wheel (module ``gpucheck_probe``), as `pip wheel` lays one out."""
    dir_.mkdir(parents=True, exist_ok=True)
    path = dir_ / "gpucheck_probe-0.1-py3-none-any.whl"
    info = "gpucheck_probe-0.1.dist-info"
    files = {"gpucheck_probe/__init__.py": "VALUE = 1\n",
             f"{info}/METADATA": "Metadata-Version: 2.1\nName: gpucheck-probe\nVersion: 0.1\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{name},,\n" for name in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return path


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, fmnist_mirror) -> tuple[dict, Path, subprocess.CompletedProcess]:
    """The whole check in CPU smoke mode on the synthetic Fashion-MNIST: the environment part
    given half a second (it is stopped: a timeout), the tests part the gpu-marked tests (every
    one skipped without CUDA), the others limits a busy CPU can meet."""
    tmp = tmp_path_factory.mktemp("gpu_check")
    cmd = [sys.executable, str(REPO / "pipelines" / "gpu_check.py"), "--cpu-smoke", "--out", str(tmp / "out"),
           "--work", str(tmp / "work"), "--wheels", str(probe_wheel(tmp / "wheels").parent), "--site", str(tmp / "site"),
           "--imports", "import gpucheck_probe, tabulate", "--mirror", str(fmnist_mirror), "--data", str(tmp / "data"),
           "--limit", "environment=0.5", "--pytest-args", "tests/test_gpu.py", "--budget-s", "1500",
           *(f"--limit={p}=600" for p in ("prepare", "tests", "bench", "runs"))]  # a busy 2-core machine
    proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=900)
    return json.loads((tmp / "out" / gpu_check.JSON).read_text()), tmp, proc


def test_exactly_three_flat_files_come_back(smoke) -> None:
    doc, tmp, proc = smoke
    out = tmp / "out"
    assert sorted(p.name for p in out.iterdir()) == sorted([gpu_check.JSON, gpu_check.BENCH, gpu_check.LOGS])
    assert all(p.is_file() for p in out.iterdir())
    assert json.loads((out / gpu_check.BENCH).read_text())["targets"] == doc["parts"]["bench"]["targets"]
    with tarfile.open(out / gpu_check.LOGS) as tar:
        names = tar.getnames()
    assert {"logs/pytest.log", "logs/gpu_tests.xml", "logs/bench.log", "logs/run_vicreg.log"} <= set(names)
    # a run by hand with its epochs changed has a place of its own (embreg.train)
    assert any(n.startswith("runs/results/runs/svmax@epochs=1/seed0/") for n in names) and doc["logs"]["left_out"] == []
    assert proc.returncode == 1  # two parts are not ok: the exit status says so


def test_every_part_is_recorded_and_a_timeout_loses_none_of_the_others(smoke) -> None:
    doc, _, _ = smoke
    parts = doc["parts"]
    assert list(parts) == list(gpu_check.LIMITS) and doc["mode"] == "cpu-smoke" and doc["finished"]
    env = parts["environment"]
    assert env["status"] == "timeout" and env["commands"]["probe"]["returncode"] is None
    assert env["limit_s"] == 1.0  # at least a second
    assert {n: p["status"] for n, p in parts.items() if n not in ("environment", "tests")} == dict.fromkeys(
        ["install", "prepare", "bench", "runs"], "ok")
    for p in parts.values():
        assert p["seconds"] <= p["limit_s"] + 15  # stopped within its limit (TERM, then KILL)
        for c in p["commands"].values():
            assert c["log"] and c["command"]


def test_a_tests_part_where_every_test_was_skipped_fails(smoke) -> None:
    tests = smoke[0]["parts"]["tests"]
    assert tests["commands"]["pytest"]["returncode"] == 0 and tests["counts"]["skipped"] == tests["counts"]["tests"] > 0
    assert tests["status"] == "failed" and "every test was skipped" in tests["why"]
    assert gpu_check.tests_verdict(5, None) == ("failed", "no test was collected")
    assert gpu_check.tests_verdict(0, {"tests": 3, "failures": 0, "errors": 0, "skipped": 1, "passed": 2}) == ("ok", None)
    assert gpu_check.tests_verdict(None, None) == ("timeout", None)


def test_the_limits_fit_five_minutes() -> None:
    a = gpu_check.parse_args([])
    assert sum(gpu_check.LIMITS.values()) + gpu_check.SUMMARY_S <= 300 and a.budget_s <= 300


def test_install_puts_the_wheels_in_the_site_used_by_every_part(smoke) -> None:
    doc, tmp, _ = smoke
    inst = doc["parts"]["install"]
    assert inst["wheels"] == ["gpucheck_probe-0.1-py3-none-any.whl"] and inst["installed_by"] == "pip"
    assert (tmp / "site" / "gpucheck_probe" / "__init__.py").is_file()
    assert doc["parts"]["prepare"]["card"]["train"] == 500  # the synthetic mirror's 50 per class


def test_bench_and_runs_parts_carry_their_results(smoke) -> None:
    doc, _, _ = smoke
    targets = doc["parts"]["bench"]["targets"]
    assert "gpu_step_over_bare" in targets and "gpu_syncs_per_step" in targets
    runs = doc["parts"]["runs"]
    assert sorted(r["arm"] for r in runs["runs"]) == ["svmax", "vicreg"]
    for r in runs["runs"]:
        assert r["state"] == "done" and r["steps"] == 2 and r["pretrain_seconds"] > 0 and r["eval_seconds"] > 0
        assert 0 <= r["linear_top1"] <= 100 and r["wall_s"] >= r["pretrain_seconds"] + r["eval_seconds"]
    grid = runs["grid"]
    assert grid["profile"] == "smoke" and grid["runs"] > 2 and grid["concurrency"] == 2
    assert grid["grid_s"] > 0 and 0 < grid["eval_fraction"] < 1


def test_a_failing_command_is_failed_and_the_json_is_rewritten(tmp_path: Path) -> None:
    rec = gpu_check.Record(tmp_path / "c.json", 60, {"mode": "cpu-smoke"})
    entry = gpu_check.part(rec, "prepare", {"bad": [sys.executable, "-c", "print('x'); raise SystemExit(3)"]}, {}, 30,
                           tmp_path)
    assert entry["status"] == "failed" and entry["commands"]["bad"]["returncode"] == 3
    saved = json.loads((tmp_path / "c.json").read_text())
    assert saved["parts"]["prepare"]["commands"]["bad"]["tail"].strip() == "x"


def test_junit_counts(tmp_path: Path) -> None:
    xml = tmp_path / "j.xml"
    xml.write_text('<testsuites><testsuite tests="5" failures="1" errors="1" skipped="2"/></testsuites>')
    assert gpu_check.junit_counts(xml) == {"tests": 5, "failures": 1, "errors": 1, "skipped": 2, "passed": 1}
    assert gpu_check.junit_counts(tmp_path / "none.xml") is None
