"""A sweep submitted and left, on the real cluster (tests/slurm/cluster.sh, `make slurm-up`): the
submitter returns once SLURM has the jobs (exit status 75) and a hangup of its terminal cancels
nothing; `embreg status` follows the jobs; a later sweep stage submits none of them again and
returns again while they run (detached) or waits for them (attached) and completes; an attached
sweep stopped while it waits cancels the jobs it waited on.

Two runs (one array of two tasks), submitted held (``sbatch --hold``): the test releases each
task when it wants it to run, so every step sees the jobs in the state it checks, however slow
the machine. The jobs run with the smoke profile's tiny runs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from embreg.sweep import scheduler
from embreg.sweep.detach import DETACHED
from tests.conftest import copy_repo, run_cmd, tool_env, use_pipeline
from tests.slurm.conftest import require_cluster, wait_for

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

PAIR = """name: pair
title: "Two arms"
question: "A sweep of two runs, for the detached-sweep test"
arms: [vicreg, svmax]
baselines: []
comparisons: [[svmax, vicreg]]
seeds: ${profile.seeds}
sweep_seeds: ${profile.sweep_seeds}
"""


def _env(repo: Path) -> dict[str, str]:
    # unbuffered: the test reads the stage's output while it runs; EMBREG_CONF: `embreg status`
    # reads this copy's conf/ (it holds the two-run ablation)
    return {**tool_env(), "PYTHONUNBUFFERED": "1", "EMBREG_CONF": str(repo / "conf")}


def _run(cmd: list[str], repo: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=repo, env=_env(repo), capture_output=True, text=True)


def _status(repo: Path) -> dict[str, dict]:
    return {p.parent.parent.name: json.loads(p.read_text())
            for p in (repo / "results" / "smoke" / "runs").glob("*/seed0/status.json")}


def _multiruns(repo: Path) -> int:
    """How many multiruns the sweep log shows started (one line `$ <command>` each)."""
    return sum(line.startswith("$ ") for line in (repo / "outputs/logs/sweep-smoke.log").read_text().splitlines())


def _left_behind(repo: Path) -> list[int]:
    """Processes still running a multirun in ``repo`` (the submitter must stop its own)."""
    out = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if Path(os.readlink(proc / "cwd")) == repo and b"embreg.train" in (proc / "cmdline").read_bytes():
                out.append(int(proc.name))
        except OSError:
            continue
    return out


@pytest.fixture(scope="module")
def repo(tmp_path_factory, fmnist_mirror) -> Path:
    """A copy of the repository running an ablation of two runs on SLURM, its jobs held."""
    require_cluster()
    repo = tmp_path_factory.mktemp("detach")
    copy_repo(repo)
    (repo / "conf" / "ablation" / "pair.yaml").write_text(PAIR)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    use_pipeline(params, "smoke", ["profile.ablations=[pair]"])
    params.update(launcher="slurm", data={"dir": "data", "mirrors": {"fashion_mnist": str(fmnist_mirror)}},
                  slurm={"additional_parameters": {"hold": True}})
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    run_cmd(["git", "init", "-q"], repo)
    run_cmd([*git, "add", "-A"], repo)
    run_cmd([*git, "commit", "-qm", "copy"], repo)
    run_cmd(["dvc", "repro", "prepare"], repo)
    return repo


@pytest.fixture(scope="module")
def story(repo):
    """The whole life of one detached sweep; what each step saw."""
    seen: dict = {}
    env = _env(repo)
    # 1. submitted from a terminal session that hangs up once the command has returned
    shell = subprocess.Popen(["bash", "-c", f"{sys.executable} pipelines/sweep.py --detach > submit.out 2>&1; "
                              "echo $? > submit.rc; exec sleep 600"], cwd=repo, env=env, start_new_session=True)
    sweep = ""
    try:
        t0 = time.monotonic()
        wait_for(lambda: (repo / "submit.rc").is_file(), 300, "the detached submitter to return")
        seen["seconds"], seen["code"] = time.monotonic() - t0, int((repo / "submit.rc").read_text())
        seen["out"], seen["left_behind"] = (repo / "submit.out").read_text(), _left_behind(repo)
        seen["queued"] = _status(repo)
        sweep = next(iter(seen["queued"].values()))["sweep"]
        seen["jobs"] = scheduler.jobs_named(sweep)
        os.killpg(shell.pid, signal.SIGHUP)  # the SSH connection drops
        shell.wait(timeout=30)
        time.sleep(2)
        seen["after_hangup"] = scheduler.jobs_named(sweep)
        # 2. followed with `embreg status`
        seen["rows"] = json.loads(_run(["embreg", "status", "--json"], repo).stdout)
        # 3. one task runs; a detached `dvc repro` (the site file's setting) returns again
        array = next(iter(seen["jobs"])).split("_")[0]
        subprocess.run(["scontrol", "release", f"{array}_0"], check=True)
        wait_for(lambda: any(st.get("slurm_job_id") for st in _status(repo).values()), 300, "task 0 to start")
        (repo / "params.local.yaml").write_text(yaml.safe_dump({"slurm": {"detach": True}}))
        seen["again"] = _run(["dvc", "repro", "sweep"], repo)
        seen["again_jobs"], seen["again_multiruns"] = scheduler.jobs_named(sweep), _multiruns(repo)
        seen["lock_after_again"] = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
        # 4. an attached `dvc repro` waits for the jobs in flight, then completes
        (repo / "params.local.yaml").unlink()
        with open(repo / "final.out", "w") as out:
            final = subprocess.Popen(["dvc", "repro", "sweep"], cwd=repo, env=env, stdout=out, stderr=subprocess.STDOUT)
        wait_for(lambda: "not submitted again" in (repo / "final.out").read_text(), 120, "the attached sweep to wait")
        subprocess.run(["scontrol", "release", f"{array}_1"], check=True)
        seen["final_code"] = final.wait(timeout=600)
        seen["final_out"], seen["final_multiruns"] = (repo / "final.out").read_text(), _multiruns(repo)
        seen["done"], seen["final_jobs"] = _status(repo), scheduler.jobs_named(sweep)
    finally:
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGKILL)
        if sweep:
            scheduler.cancel(list(scheduler.jobs_named(sweep)))
    return sweep, seen


def test_the_submitter_returns_once_the_jobs_are_queued(repo, story):
    sweep, seen = story
    assert seen["code"] == DETACHED, seen["out"]
    assert seen["seconds"] < 120, seen["seconds"]
    assert "detached: 0 done, 0 running, 2 queued (of 2 runs)" in seen["out"]
    assert "`embreg status`" in seen["out"] and "`dvc repro`" in seen["out"]
    assert {st["state"] for st in seen["queued"].values()} == {"queued"}
    assert len(seen["jobs"]) == 2 and set(seen["jobs"].values()) == {"PENDING"}, seen["jobs"]
    assert seen["left_behind"] == [], "the submitter left its multiruns running"


def test_a_hangup_of_its_terminal_cancels_no_job(story):
    _, seen = story
    assert seen["after_hangup"] == seen["jobs"]  # still pending, not cancelled


def test_embreg_status_follows_the_detached_jobs(story):
    sweep, seen = story
    rows = {r["run_id"]: r for r in seen["rows"]}
    assert rows.keys() == {"vicreg", "svmax"}
    # not started: a run names no job yet, only its sweep, whose pending tasks SLURM reports
    assert {(r["state"], r["scheduler"], r["sweep"], r["slurm_job_id"]) for r in rows.values()} == {
        ("queued", "PENDING", sweep, None)}


def test_a_later_sweep_stage_submits_nothing_again_and_returns_again(story):
    _, seen = story
    res = seen["again"]
    assert res.returncode != 0 and f"exited with {DETACHED}" in res.stdout + res.stderr, res.stderr[-2000:]
    assert re.search(r"[12] of 2 runs are held by the SLURM jobs of an earlier sweep", res.stdout), res.stdout
    assert re.search(r"detached: \d done, \d running, 1 queued \(of 2 runs\)", res.stdout), res.stdout
    assert seen["again_multiruns"] == 1 and seen["again_jobs"].keys() == seen["jobs"].keys()
    assert "sweep" not in seen["lock_after_again"]  # DVC did not record a stage that has not finished


def test_the_attached_stage_waits_for_the_jobs_and_completes(story):
    _, seen = story
    assert seen["final_code"] == 0, seen["final_out"][-3000:]
    assert "all 2 runs done" in seen["final_out"]
    assert seen["final_multiruns"] == 1  # the sweep log shows the first submission only
    assert {st["state"] for st in seen["done"].values()} == {"done"}
    assert {st["slurm_job_id"] for st in seen["done"].values()} == set(seen["jobs"])  # the very jobs submitted first
    assert set(seen["final_jobs"].values()) == {"COMPLETED"}


@pytest.fixture(scope="module")
def stopped(repo, story):
    """After the story: both runs deleted, submitted detached again (held), then an attached
    sweep stage waiting for them is sent HUP (its terminal hangs up)."""
    for rd in (repo / "results" / "smoke" / "runs").glob("*/seed0"):
        shutil.rmtree(rd)
    assert _run([sys.executable, "pipelines/sweep.py", "--detach"], repo).returncode == DETACHED
    sweep = next(iter(_status(repo).values()))["sweep"]
    try:
        with open(repo / "stopped.out", "w") as out:
            proc = subprocess.Popen([sys.executable, "pipelines/sweep.py"], cwd=repo, env=_env(repo), stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(lambda: "not submitted again" in (repo / "stopped.out").read_text(), 120, "the sweep to wait")
        time.sleep(2)  # into its wait for the jobs
        proc.send_signal(signal.SIGHUP)
        code = proc.wait(timeout=120)
        return code, (repo / "stopped.out").read_text(), scheduler.jobs_named(sweep), repo
    finally:
        scheduler.cancel(list(scheduler.jobs_named(sweep)))


def test_an_attached_stage_stopped_while_it_waits_cancels_the_jobs(stopped):
    code, out, jobs, repo = stopped
    assert code == 130 and "interrupted (signal 1)" in out, out[-2000:]
    # the held array, cancelled before any task started, may be listed as one job
    assert jobs and not set(jobs.values()) & scheduler.ACTIVE, jobs
    # nothing is left to collect: the next sweep stage resumes both runs, as after any interrupt
    assert not (repo / "outputs/logs/sweep-smoke.detached.json").exists()


@pytest.fixture(scope="module")
def collected(repo, stopped):
    """After ``stopped``: resubmitted detached (held), the jobs cancelled by the user; the next
    detached sweep stage collects the sweep, the one after submits its runs again."""
    def sweep_stage() -> subprocess.CompletedProcess:
        return _run([sys.executable, "pipelines/sweep.py", "--detach"], repo)

    first = sweep_stage()
    sweep = next(iter(_status(repo).values()))["sweep"]
    names = [sweep]
    try:
        scheduler.cancel(list(scheduler.jobs_named(sweep)))
        wait_for(lambda: not set(scheduler.jobs_named(sweep).values()) & scheduler.ACTIVE, 60, "the cancel")
        multiruns = _multiruns(repo)
        collect = sweep_stage()
        seen = {"states": {k: st["state"] for k, st in _status(repo).items()}, "multiruns": _multiruns(repo) - multiruns}
        again = sweep_stage()
        names.append(next(iter(_status(repo).values()))["sweep"])
        return first, collect, seen, again, names
    finally:
        for name in names:
            scheduler.cancel(list(scheduler.jobs_named(name)))


def test_a_detached_sweep_is_collected_once_its_jobs_have_ended(collected):
    first, collect, seen, again, names = collected
    assert first.returncode == DETACHED and "2 of 2 runs to train" in first.stdout, first.stdout
    # collected: the scheduler's verdict recorded and reported, exit status 1, nothing submitted
    assert collect.returncode == 1, collect.stdout + collect.stderr
    assert "2 of 2 runs ended without a result in a detached sweep" in collect.stdout
    assert "2 of 2 runs did not finish" in collect.stderr and "`dvc repro` again retrains only these runs" in collect.stderr
    assert seen["states"] == {"vicreg": "cancelled", "svmax": "cancelled"} and seen["multiruns"] == 0
    # the next one retrains them, as after any sweep that ended with failures
    assert again.returncode == DETACHED and "2 of 2 runs to train" in again.stdout, again.stdout
    assert names[1] != names[0]


@pytest.fixture(scope="module")
def refused(repo, collected):
    """sbatch refuses the detached submission (a partition the cluster does not have)."""
    (repo / "outputs/logs/sweep-smoke.detached.json").unlink()  # the sweep ``collected`` left, forgotten
    (repo / "params.local.yaml").write_text(yaml.safe_dump({"slurm": {"partition": "nowhere"}}))
    try:
        res = _run([sys.executable, "pipelines/sweep.py", "--detach"], repo)
    finally:
        (repo / "params.local.yaml").unlink()
    status = _status(repo)
    return res, status, scheduler.jobs_named(next(iter(status.values()))["sweep"])


def test_a_refused_submission_fails_its_runs_and_leaves_nothing_queued(repo, refused):
    res, status, jobs = refused
    assert res.returncode == 1 and "2 of 2 runs did not finish" in res.stderr, res.stdout + res.stderr
    assert {st["state"] for st in status.values()} == {"failed"}
    assert all(st["error"].startswith("submission to SLURM failed") for st in status.values()), status
    assert jobs == {} and not (repo / "outputs/logs/sweep-smoke.detached.json").exists()
