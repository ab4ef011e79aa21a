"""embreg.sweep.scheduler and `embreg status` against the real cluster (tests/slurm/cluster.sh,
`make slurm-up`): a plain job and a 2-task array of `sleep`, one cancelled."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from embreg.io import write_json
from embreg.params import load_params
from embreg.rundir import run_dir
from embreg.sweep import scheduler
from embreg.sweep.plan import Job, make_plan
from embreg.sweep.status import collect
from tests.conftest import run_cmd
from tests.slurm.conftest import require_cluster
from tests.sweep.test_status import _tables

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

NAME = f"embreg-status-test-{os.getpid()}"


@pytest.fixture(scope="module", autouse=True)
def cluster() -> None:
    require_cluster()


@pytest.fixture
def submit() -> Iterator[Callable[..., str]]:
    """sbatch a 5-minute sleep (extra sbatch flags as arguments); every job is cancelled after."""
    ids: list[str] = []

    def sbatch(*flags: str) -> str:
        cmd = ["sbatch", "--parsable", "-J", NAME, "-o", "/dev/null", *flags, "--wrap", "sleep 300"]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        ids.append(res.stdout.strip().split(";")[0])
        return ids[-1]

    try:
        yield sbatch
    finally:
        subprocess.run(["scancel", *ids], capture_output=True)


def wait_for(what: str, check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(1)


def sacct_state(job: str) -> str:
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "State", "-j", job],
                         capture_output=True, text=True).stdout
    return out.split()[0] if out.strip() else ""


def test_pending_array_tasks_one_by_one(submit):
    array = submit("--array=0-1%1")  # throttled: task 1 waits until task 0 ends
    tasks = [f"{array}_0", f"{array}_1"]
    # sacct lists the waiting task only inside a range (12_[1%1]); both tools must give it alone
    wait_for("sacct to list the array", lambda: set(tasks) <= set(scheduler._accounting(["-j", array])))
    assert scheduler._accounting(["-j", array])[tasks[1]] == "PENDING"
    assert scheduler._queue(["-j", array])[tasks[1]] == "PENDING"
    states = scheduler.job_states([*tasks, "999999999", "999999999_3"])
    assert states.keys() == set(tasks) and states[tasks[1]] == "PENDING"
    assert states[tasks[0]] in scheduler.ACTIVE
    assert scheduler.job_states(["999999999"]) == {}  # unknown to squeue and sacct: left out


def test_cancelled_job_shows_in_status(submit, tmp_path):
    single = submit()
    array = submit("--array=0-1")
    ids = [single, f"{array}_0", f"{array}_1"]
    states = scheduler.job_states(ids)
    assert states.keys() == set(ids) and set(states.values()) <= {"RUNNING", "PENDING"}, states
    assert set(ids) <= scheduler.jobs_named(NAME).keys()

    scheduler.cancel([single])
    wait_for(f"sacct to report job {single} CANCELLED", lambda: sacct_state(single) == "CANCELLED")
    states = scheduler.job_states(ids)
    assert states[single] == "CANCELLED"
    assert {states[f"{array}_0"], states[f"{array}_1"]} <= scheduler.ACTIVE, states

    # a run whose status file still says running, its job cancelled; another queued in the array
    params = {"default": {"profile": "smoke", "overrides": [f"paths.results={tmp_path}/results"]}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    plan = make_plan(load_params(tmp_path / "params.yaml"), ["layers"])
    written = [(Job("vicreg", 0), "running", single), (Job("svmax", 0), "queued", f"{array}_1")]
    for job, state, job_id in written:
        write_json(run_dir(plan.configs[job]) / "status.json",
                   {"state": state, "slurm_job_id": job_id, "log": f"/logs/{job_id}_0_log.out"})
    rows = {r["run_id"]: r for r in collect(load_params(tmp_path / "params.yaml"), ["layers"])}
    assert (rows["vicreg"]["state"], rows["vicreg"]["scheduler"]) == ("cancelled", "CANCELLED")
    assert rows["vicreg"]["slurm_job_id"] == single and rows["vicreg"]["log"] == f"/logs/{single}_0_log.out"
    assert rows["svmax"]["state"] == "queued" and rows["svmax"]["scheduler"] in scheduler.ACTIVE
    assert rows["svmax_all"]["state"] == "missing" and rows["svmax_all"]["scheduler"] is None


def test_status_command_on_the_cluster(submit, tmp_path):
    """The same through the `embreg` command: the lost job's state in both tables."""
    single = submit()
    scheduler.cancel([single])
    wait_for(f"sacct to report job {single} CANCELLED", lambda: sacct_state(single) == "CANCELLED")
    params = {"default": {"profile": "smoke", "overrides": [f"paths.results={tmp_path}/results"]}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    plan = make_plan(load_params(tmp_path / "params.yaml"), ["layers"])
    write_json(run_dir(plan.configs[Job("vicreg", 0)]) / "status.json",
               {"state": "running", "slurm_job_id": single})
    embreg = Path(sys.executable).parent / "embreg"
    out = run_cmd([str(embreg), "status", "--ablation", "layers"], tmp_path).stdout
    counts, runs = _tables(out)
    # every other run of the ablation (arms, references and sweep points) was never started
    assert [(c["cancelled"], c["missing"]) for c in counts] == [("1", str(len(plan.jobs) - 1))]
    vicreg = next(r for r in runs if r["run"] == "vicreg")
    assert (vicreg["state"], vicreg["slurm"], vicreg["job"]) == ("cancelled", "CANCELLED", single)
