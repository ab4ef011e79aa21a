"""pipelines/gpu_grid.py on the CPU (``--cpu-smoke``) in temporary copies of the repository: a
call whose budget runs out stops its sweep cleanly (checkpoints kept) and writes three flat
files; a second call on the same machine with the first's archive finishes the grid without
training a finished run again; a third on a fresh copy with the second's archive trains nothing."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from tests.conftest import copy_repo, tool_env, use_pipeline

pytestmark = pytest.mark.slow

# a two-run grid: the smoke profile's vicreg (long enough to be cut by the first budget) and the
# raw-pixel reference (seconds), through a one-arm ablation written into the copy's conf/
ABLATION = {"name": "grid_test", "title": "grid test", "question": "", "arms": ["vicreg"],
            "baselines": "${profile.baselines}", "seeds": "${profile.seeds}", "sweep_seeds": "${profile.sweep_seeds}"}
OVERRIDES = ["profile.ablations=[grid_test]", "profile.baselines=[pixels]", "profile.sweep_seeds=[]",
             "pretrain.steps_per_epoch=100"]
FILES = ["gpu_grid-logs.tar.gz", "gpu_grid.json", "smoke-runs.tar.gz"]


def grid_repo(dst: Path) -> Path:
    copy_repo(dst)
    (dst / "conf" / "ablation" / "grid_test.yaml").write_text(yaml.safe_dump(ABLATION))
    p = yaml.safe_load((dst / "params.yaml").read_text())
    use_pipeline(p, "smoke", OVERRIDES)
    (dst / "params.yaml").write_text(yaml.safe_dump(p))
    return dst


def grid(repo: Path, out: Path, mirror: Path, budget: float, *extra: str) -> tuple[int, dict]:
    cmd = [sys.executable, str(repo / "pipelines" / "gpu_grid.py"), "--cpu-smoke", "--out", str(out),
           "--work", str(repo / "work"), "--mirror", str(mirror), "--budget-s", str(budget), "--reserve-s", "30", *extra]
    proc = subprocess.run(cmd, cwd=repo, env=tool_env(), capture_output=True, text=True, timeout=budget + 120)
    assert (out / "gpu_grid.json").is_file(), proc.stderr[-3000:]
    return proc.returncode, json.loads((out / "gpu_grid.json").read_text())


def archived(archive: Path) -> dict[str, bytes]:
    """Each archived run's status.json, by "<run id>/seed<k>"."""
    with tarfile.open(archive) as tar:
        return {m.name.removeprefix("runs/").removesuffix("/status.json"): tar.extractfile(m).read()
                for m in tar if m.name.endswith("/status.json")}


@pytest.fixture(scope="module")
def calls(tmp_path_factory, fmnist_mirror) -> dict:
    tmp = tmp_path_factory.mktemp("grid")
    here, there = grid_repo(tmp / "here"), grid_repo(tmp / "there")
    first = grid(here, tmp / "out1", fmnist_mirror, 65)  # its sweep gets about 25 s: vicreg needs more
    status_after_first = {r: (here / "results" / "smoke" / "runs" / r / "status.json").read_bytes()
                          for r in archived(tmp / "out1" / "smoke-runs.tar.gz")}
    second = grid(here, tmp / "out2", fmnist_mirror, 400, "--resume-from", str(tmp / "out1" / "smoke-runs.tar.gz"))
    third = grid(there, tmp / "out3", fmnist_mirror, 200, "--resume-from", str(tmp / "out2" / "smoke-runs.tar.gz"))
    return {"tmp": tmp, "here": here, "there": there, "first": first, "second": second, "third": third,
            "kept": status_after_first}


def test_a_call_out_of_budget_stops_cleanly_and_writes_three_flat_files(calls) -> None:
    code, doc = calls["first"]
    assert code == 3 and doc["exit_status"] == 3 and "--resume-from smoke-runs.tar.gz" in doc["next"]
    sweep = doc["parts"]["sweep"]
    assert sweep["status"] == "stopped" and sweep["stopped_by"] == "budget" and sweep["returncode"] == 130
    assert doc["seconds"] <= 65 + 5  # everything, the stop and the packing included
    assert doc["runs"]["total"] == 2 and doc["runs"]["pending"] >= 1 and doc["outputs_fit"]
    assert set(doc["runs"]["pending_by_state"]) <= {"interrupted", "missing"}
    kept = [r["checkpoint"] for r in doc["runs"]["pending_runs"].values() if "checkpoint" in r]
    assert all((calls["here"] / c).is_file() for c in kept)  # a run cut mid-training keeps its checkpoint here
    assert doc["checkpoints"]["count"] == len(kept) and not doc["checkpoints"]["carried"]
    out = calls["tmp"] / "out1"
    assert sorted(p.name for p in out.iterdir()) == FILES and all(p.is_file() for p in out.iterdir())
    with tarfile.open(out / "gpu_grid-logs.tar.gz") as tar:
        assert {"logs/sweep.log", "logs/export.log", "logs/prepare.log"} <= set(tar.getnames())


def test_a_second_call_finishes_without_training_a_finished_run_again(calls) -> None:
    code, doc = calls["second"]
    assert code == 0 and doc["runs"]["done"] == 2 and doc["runs"]["pending"] == 0
    assert doc["runs"]["trained_this_call"] == 2 - len(calls["kept"])
    runs = calls["here"] / "results" / "smoke" / "runs"
    for run, status in calls["kept"].items():
        assert (runs / run / "status.json").read_bytes() == status  # finished in the first call: untouched
    metrics = json.loads((runs / "vicreg" / "seed0" / "metrics.json").read_text())
    if "vicreg/seed0" not in calls["kept"] and calls["first"][1]["runs"]["pending_runs"]["vicreg/seed0"].get("checkpoint"):
        assert metrics["resumed_at_steps"]  # resumed from the checkpoint the first call left
    assert sorted(p.name for p in (calls["tmp"] / "out2").iterdir()) == FILES


def test_a_fresh_machine_with_the_archive_trains_nothing(calls) -> None:
    code, doc = calls["third"]
    assert code == 0 and doc["runs"]["imported"] == 2 and doc["runs"]["trained_this_call"] == 0
    assert doc["parts"]["sweep"]["status"] == "ok" and "all 2 runs are up to date" in doc["parts"]["sweep"]["tail"]
    runs = calls["there"] / "results" / "smoke" / "runs"
    for run, status in archived(calls["tmp"] / "out2" / "smoke-runs.tar.gz").items():
        assert (runs / run / "status.json").read_bytes() == status
