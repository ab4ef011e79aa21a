"""Failures on the real cluster, through `dvc repro` with `launcher: slurm`: a run that crashes,
one that diverges and a job cancelled with `scancel` do not stop the others; the sweep stage
ends with a table of them (with log paths) and exits non-zero; the analysis marks their cells;
`dvc repro` again submits only those runs."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import copy_repo, run_cmd, tool_env, use_pipeline
from tests.slurm.conftest import require_cluster, wait_for

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

# What breaks runs. Divergence: an invariance weight that float32 cannot hold (a finite number,
# so the config is valid, but inf once it multiplies the loss: "loss is inf"; the svmax and
# var_l2 arms build on inv_only, so they diverge too). A crash in the job: a directory where
# vicreg_nocov's checkpoint goes, so that its first checkpoint, after its first epoch, raises
# (IsADirectoryError; recorded as failed). Both pass the sweep's validation: they are what it
# cannot see before the runs start.
BREAK = {"inv_only": ("invariance", 1e300)}
CRASHING = "vicreg_nocov"
CRASH_ERROR = "IsADirectoryError"
HEALTHY = ("vicreg", "vicreg_all", "supervised")  # candidates to cancel mid-run


def _checkpoint_in_the_way(repo: Path) -> Path:
    return repo / "checkpoints" / "smoke" / CRASHING / "seed0" / "last.pt"


def _expected(repo: Path, key: str) -> str:
    """What a run should end as, from the config it ran with."""
    cfg = yaml.safe_load((repo / "results" / "smoke" / "runs" / key / "config.yaml").read_text())
    if cfg["objective"]["name"] == CRASHING:
        return "failed"
    return "diverged" if cfg["objective"]["terms"].get("invariance") == BREAK["inv_only"][1] else "done"


def _edit_objective(repo: Path, name: str, key: str, value) -> str:
    path = repo / "conf" / "objective" / f"{name}.yaml"
    original = path.read_text()
    cfg = yaml.safe_load(original)
    cfg["terms"][key] = value  # a term's coefficient
    path.write_text(yaml.safe_dump(cfg))
    return original


def _status(repo: Path) -> dict[str, dict]:
    out = {}
    for path in (repo / "results" / "smoke" / "runs").glob("*/seed*/status.json"):
        out[f"{path.parent.parent.name}/{path.parent.name}"] = json.loads(path.read_text())
    return out


def _running_job(repo: Path) -> tuple[str, str] | None:
    """A run of an unbroken arm that started training on SLURM a moment ago: (run/seed, job id)."""
    for key, st in _status(repo).items():
        if (st["state"] == "running" and st.get("slurm_job_id") and st["arm"] in HEALTHY
                and time.time() - st["started"] < 2):
            return key, st["slurm_job_id"]
    return None


def _pending_job(name: str) -> str | None:
    """A task of the sweep that SLURM has not started yet."""
    out = subprocess.run(["squeue", "-h", "-r", "-t", "PENDING", "-n", name, "-o", "%i"],
                         capture_output=True, text=True).stdout.split()
    return out[-1] if out else None


@pytest.fixture(scope="module")
def broken_sweep(tmp_path_factory, fmnist_mirror):
    require_cluster()
    repo = tmp_path_factory.mktemp("failures")
    copy_repo(repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    # runs of a few seconds more than SLURM's KillWait, so that a cancel lands mid-run
    use_pipeline(params, "smoke", ["pretrain.epochs=5", "pretrain.steps_per_epoch=5"])
    params.update(data={"dir": "data", "mirrors": {"fashion_mnist": str(fmnist_mirror)}}, launcher="slurm")
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    originals = {name: _edit_objective(repo, name, *edit) for name, edit in BREAK.items()}
    blocker = _checkpoint_in_the_way(repo)
    blocker.mkdir(parents=True)
    (blocker / "not-a-checkpoint").write_text("a directory where the run's checkpoint goes")
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    run_cmd(["git", "init", "-q"], repo)
    run_cmd([*git, "add", "-A"], repo)
    run_cmd([*git, "commit", "-qm", "copy"], repo)
    run_cmd(["dvc", "repro", "prepare"], repo)

    out, err = repo / "repro.out", repo / "repro.err"
    with open(out, "w") as fo, open(err, "w") as fe:
        proc = subprocess.Popen(["dvc", "repro", "analyze"], cwd=repo, env=tool_env(), stdout=fo, stderr=fe)
    found: list[tuple[str, str]] = []
    try:
        wait_for(lambda: found.extend(filter(None, [_running_job(repo)])) or found, 600, "a running job")
        cancelled, job_id = found[0]
        sweep = _status(repo)[cancelled]["sweep"]
        pending = _pending_job(sweep)
        assert pending, "no pending task left to cancel"
        subprocess.run(["scancel", job_id, pending], check=True)
        t0 = time.monotonic()
        proc.wait(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    return (repo, proc.returncode, out.read_text(), err.read_text(), cancelled, job_id,
            time.monotonic() - t0, originals)


def test_the_sweep_reports_every_failure_and_exits_non_zero(broken_sweep):
    repo, code, out, err, cancelled, job_id, _, _ = broken_sweep
    assert code != 0
    status = _status(repo)
    assert status[cancelled]["state"] == "cancelled" and job_id in status[cancelled]["error"]
    # the task cancelled while pending never started: its run is cancelled "before it started"
    never = [k for k, st in status.items() if st["state"] == "cancelled" and k != cancelled]
    assert len(never) == 1 and "before the run started" in status[never[0]]["error"], status
    for key, st in status.items():
        if key in (cancelled, *never):
            continue
        assert st["state"] == _expected(repo, key), (key, st)  # the failures stopped no other run
        if st["state"] == "diverged":
            assert "loss is inf" in st["error"], st
        elif st["state"] == "failed":
            assert CRASH_ERROR in st["error"] and "last.pt" in st["error"], st
    assert {st["state"] for st in status.values()} == {"done", "diverged", "failed", "cancelled"}
    # the table names each of them, with the job's log where the run started
    table = err[err.index("runs did not finish"):]
    for key, st in status.items():
        if st["state"] == "done":
            continue
        run = key.split("/")[0]
        line = next(ln for ln in table.splitlines() if f" {run} " in ln and ln.split()[0] == st["state"])
        if key not in never:
            assert st["log"] in line and Path(st["log"]).is_file(), line
    assert "`dvc repro` again retrains only these runs" in err


def test_a_cancelled_job_is_reported_not_waited_on(broken_sweep):
    _, _, _, _, _, _, seconds_after_cancel, _ = broken_sweep
    assert seconds_after_cancel < 600


def test_the_analysis_marks_the_failed_cells(broken_sweep):
    repo = broken_sweep[0]
    run_cmd(["dvc", "repro", "-s", "analyze"], repo)
    main = (repo / "results" / "smoke" / "tables" / "main.md").read_text()
    assert "seed 0 diverged (loss is inf" in main
    assert "seed 0 failed" in main and CRASH_ERROR in main


def test_repro_again_submits_only_the_runs_that_did_not_finish(broken_sweep):
    repo, _, _, _, cancelled, _, _, originals = broken_sweep
    for name, text in originals.items():  # the user fixes the broken arms
        (repo / "conf" / "objective" / f"{name}.yaml").write_text(text)
    shutil.rmtree(_checkpoint_in_the_way(repo))  # and clears the checkpoint's way
    before = {k: st for k, st in _status(repo).items()}
    mtimes = {k: (repo / "results/smoke/runs" / k / "metrics.json").stat().st_mtime_ns
              for k, st in before.items() if st["state"] == "done"}
    res = run_cmd(["dvc", "repro", "analyze"], repo)
    todo = sum(st["state"] != "done" for st in before.values())
    assert f"{todo} of {len(before)} runs to train" in res.stdout
    after = _status(repo)
    assert all(st["state"] == "done" for st in after.values())
    for key, mtime in mtimes.items():
        assert (repo / "results/smoke/runs" / key / "metrics.json").stat().st_mtime_ns == mtime, key
    assert after[cancelled]["state"] == "done"
