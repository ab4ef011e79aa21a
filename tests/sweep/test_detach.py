"""A detached sweep without a cluster: which runs SLURM jobs still hold (the scheduler's answers
given), the record of detached sweeps not collected yet, when submitit has handed SLURM a
multirun's jobs, and the launcher settings refused before anything is touched. The cluster
itself: tests/slurm/test_slurm_detach.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from embreg.checks import ConfigError
from embreg.io import write_json
from embreg.params import PipelineParams
from embreg.rundir import run_dir
from embreg.sweep import scheduler
from embreg.sweep.detach import (
    DETACHED,
    check_detach,
    detached_sweeps,
    forget,
    handed_over,
    marker_path,
    remember,
    summary,
)
from embreg.sweep.inflight import ended_in, in_flight
from embreg.sweep.plan import Job, make_plan

REPO = Path(__file__).resolve().parents[2]
# run -> its status file; S: a sweep with one task running, one pending, one requeued; T: over
WRITTEN = {
    Job("vicreg", 0): {"state": "running", "slurm_job_id": "7_0", "sweep": "S", "host": "node1"},
    Job("svmax", 0): {"state": "queued", "sweep": "S"},  # not started: task 7_1 may still start it
    Job("svmax_all", 0): {"state": "interrupted", "slurm_job_id": "7_2", "sweep": "S"},  # preempted
    Job("vicreg_all", 0): {"state": "queued", "sweep": "T"},  # T's only task was cancelled
    Job("random_init", 0): {"state": "running", "slurm_job_id": "9_0", "sweep": "S", "host": "node1"},
    Job("pixels", 0): {"state": "running", "pid": 1, "host": "node1"},  # a local run: not SLURM's
}
SLURM = {"7_0": "RUNNING", "7_1": "PENDING", "7_2": "REQUEUED", "8_0": "CANCELLED", "9_0": "COMPLETED"}
SWEEPS = {"S": ("7_0", "7_1", "7_2", "9_0"), "T": ("8_0",)}


@pytest.fixture
def plan(tmp_path):
    params = PipelineParams(profile="smoke", overrides=[f"paths.results={tmp_path}/results"])
    plan = make_plan(params, ["layers"])
    for job, status in WRITTEN.items():
        write_json(run_dir(plan.configs[job]) / "status.json", status)
    return plan


@pytest.fixture
def cluster(monkeypatch):
    """The scheduler's answers, as embreg.sweep.scheduler gives them."""
    monkeypatch.setattr(scheduler, "available", lambda: True)
    monkeypatch.setattr(scheduler, "job_states", lambda ids: {i: SLURM[i] for i in ids if i in SLURM})
    monkeypatch.setattr(scheduler, "jobs_named", lambda name: {i: SLURM[i] for i in SWEEPS.get(name, ())})


def test_runs_held_by_live_jobs(plan, cluster):
    live = in_flight(plan)
    assert live == {Job("vicreg", 0): "S", Job("svmax", 0): "S", Job("svmax_all", 0): "S"}
    # the rest of S and T ended without a result: reported when collected, not submitted again before
    assert ended_in(plan, ["S", "T"], live) == {Job("vicreg_all", 0), Job("random_init", 0)}
    assert ended_in(plan, [], live) == set()
    assert summary(plan, live) == f"0 done, 2 running, 1 queued, {len(plan.jobs) - 3} ended without a result " \
                                  f"(of {len(plan.jobs)} runs)"


def test_a_queued_run_is_live_while_an_unclaimed_task_of_its_sweep_is(plan, cluster, monkeypatch):
    monkeypatch.setitem(SLURM, "7_1", "CANCELLED")  # the task that would have started svmax
    assert Job("svmax", 0) not in in_flight(plan)


def test_status_shows_a_queued_run_by_its_sweeps_tasks(plan, cluster, tmp_path):
    """`embreg status`: a run not started shows the state of the tasks that may start it, or
    the verdict once none may (the sweep stage records the same when it collects the sweep)."""
    from embreg.sweep.status import collect

    rows = {r["run_id"]: r for r in collect(plan.params, ["layers"])}
    assert (rows["svmax"]["state"], rows["svmax"]["scheduler"]) == ("queued", "PENDING")
    assert (rows["vicreg_all"]["state"], rows["vicreg_all"]["scheduler"]) == ("cancelled", "CANCELLED")
    assert (rows["vicreg"]["state"], rows["vicreg"]["scheduler"]) == ("running", "RUNNING")


def test_without_slurm_no_run_is_held(plan, monkeypatch):
    monkeypatch.setattr(scheduler, "available", lambda: False)
    assert in_flight(plan) == {}


def test_the_record_of_detached_sweeps(tmp_path):
    marker = marker_path(tmp_path / "logs" / "sweep-smoke.log")
    assert marker == tmp_path / "logs" / "sweep-smoke.detached.json"
    assert detached_sweeps(marker) == []
    remember(marker, "a")
    remember(marker, "b")
    remember(marker, "a")
    assert detached_sweeps(marker) == ["a", "b"]
    forget(marker)
    forget(marker)  # already gone
    assert not marker.exists()
    marker.write_text("{not json")
    assert detached_sweeps(marker) == []  # unreadable: its runs are judged like any other


def test_handed_over_once_every_pickle_has_moved(tmp_path):
    root = tmp_path / ".submitit"
    assert not handed_over(tmp_path)  # nothing written yet
    root.mkdir()
    (root / "0f1e2d.pkl").write_bytes(b"")  # pickled, sbatch not called yet
    assert not handed_over(tmp_path)
    (root / "12_0").mkdir()
    (root / "0f1e2d.pkl").rename(root / "12_0" / "12_0_submitted.pkl")
    (root / "a1b2c3.pkl").write_bytes(b"")  # submitted, its pickle not moved yet
    assert not handed_over(tmp_path)
    (root / "12_1").mkdir()
    (root / "a1b2c3.pkl").rename(root / "12_1" / "12_1_submitted.pkl")
    (root / "submission_file_ff.sh").write_text("")  # not a pickle
    assert handed_over(tmp_path)


def test_the_launcher_settings_that_cannot_detach_or_wait():
    live = {Job("vicreg", 0): "embreg-smoke-1234"}
    check_detach(PipelineParams(launcher="slurm"), True, live)
    check_detach(PipelineParams(launcher="local"), False, {})
    with pytest.raises(ConfigError, match=r"^--detach: launcher local runs the jobs as children .*; set launcher: "
                                          r"slurm, or drop --detach$"):
        check_detach(PipelineParams(launcher="local"), True, {})
    with pytest.raises(ConfigError, match=r"^launcher=local: 1 runs are still held by SLURM jobs "
                                          r"\(embreg-smoke-1234\); set launcher: slurm to collect them"):
        check_detach(PipelineParams(launcher="local"), False, live)


def test_the_sweep_stage_refuses_detach_on_the_local_launcher_before_anything(tmp_path, prepared_data):
    params = {"default": {"profile": "smoke", "overrides": [f"paths.results={tmp_path}/results",
                                                            f"paths.checkpoints={tmp_path}/ckpt"]},
              "launcher": "local", "data": {"dir": str(prepared_data)}, "dataset": "fashion_mnist"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    res = subprocess.run([sys.executable, str(REPO / "pipelines" / "sweep.py"), "--detach"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert res.returncode == 1 and res.returncode != DETACHED
    assert res.stderr.startswith("error: --detach: launcher local runs the jobs as children") and \
        res.stderr.count("\n") == 1, res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # nothing written
    res = subprocess.run([sys.executable, str(REPO / "pipelines" / "sweep.py"), "--detached"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert res.returncode == 1 and "usage: sweep.py [--pipeline NAME | --profile NAME] [--detach]; got --detached" in res.stderr
