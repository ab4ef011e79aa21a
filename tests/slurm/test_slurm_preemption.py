"""Preemption and time limits on the real cluster: a run interrupted by submitit's checkpoint
signal (`scancel --signal=USR2`) or by a real partition preemption is requeued, resumes from
its checkpoint, and ends with the same metrics as a run never interrupted."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from embreg.sweep import scheduler
from tests.slurm.conftest import require_cluster, wait_for

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

# 6 epochs of 5 steps, a checkpoint at each epoch end; periodic checkpoints off, so a resume
# mid-epoch can only come from the checkpoint written on the signal
RUN = ["profile=smoke", "objective=vicreg", "seed=0", "pretrain.epochs=6", "pretrain.steps_per_epoch=5",
       "eval.semi_supervised=true", "runtime.threads=1", "runtime.progress=false", "runtime.checkpoint_every_s=1e9"]
RUN_ID = "vicreg@epochs=6@steps_per_epoch=5@semi_supervised=True"  # a hand run's place: its changed keys
SAME = ("linear_top1", "linear_top5", "knn20_top1", "knn200_top1", "semi_1pct_top1", "semi_10pct_top1", "collapse")


def _paths(root: Path, data: Path) -> list[str]:
    return [f"paths.data={data}", f"paths.results={root}/results", f"paths.checkpoints={root}/ckpt"]


def _outputs(root: Path) -> tuple[dict, list]:
    rd = root / "results" / "runs" / RUN_ID / "seed0"
    return json.loads((rd / "metrics.json").read_text()), json.loads((rd / "history.json").read_text())


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, prepared_data) -> tuple[dict, list]:
    """The reference: the same run on this machine, one thread, never interrupted."""
    root = tmp_path_factory.mktemp("straight")
    subprocess.run([sys.executable, "-m", "embreg.train", *RUN, *_paths(root, prepared_data),
                    f"hydra.run.dir={root}/hydra"], check=True, capture_output=True, cwd=root)
    return _outputs(root)


def _submit(root: Path, data: Path, partition: str) -> tuple[subprocess.Popen, str]:
    """The run as a one-task SLURM array through hydra-submitit-launcher, as the sweep does."""
    name = f"embreg-test-{secrets.token_hex(3)}"
    cmd = [sys.executable, "-m", "embreg.train", "--multirun", *RUN, *_paths(root, data),
           "hydra/launcher=slurm", f"hydra.launcher.partition={partition}", f"hydra.launcher.name={name}",
           f"hydra.sweep.dir={root}/hydra"]
    log = open(root / "multirun.log", "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(cmd, cwd=root, stdout=log, stderr=subprocess.STDOUT), name


def _checkpoint_step(root: Path) -> int:
    path = root / "ckpt" / RUN_ID / "seed0" / "last.pt"
    try:
        return torch.load(path, weights_only=False)["step"] if path.is_file() else 0
    except Exception:  # noqa: BLE001 - being replaced this instant
        return 0


def _job_id(root: Path) -> str:
    status = root / "results" / "runs" / RUN_ID / "seed0" / "status.json"
    return json.loads(status.read_text()).get("slurm_job_id", "") if status.is_file() else ""


def _finish(proc: subprocess.Popen, root: Path, timeout: float = 420) -> None:
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, (root / "multirun.log").read_text()[-3000:]


def _assert_resumed_and_equal(root: Path, uninterrupted) -> dict:
    metrics, history = _outputs(root)
    ref_metrics, ref_history = uninterrupted
    assert metrics["resumed_at_steps"], "the job was never interrupted: no resume recorded"
    assert history == ref_history
    for key in SAME:
        assert metrics[key] == ref_metrics[key], key
    return metrics


def test_usr2_checkpoints_requeues_and_resumes_to_the_same_result(tmp_path, prepared_data, uninterrupted):
    require_cluster()
    proc, name = _submit(tmp_path, prepared_data, "debug")
    try:
        wait_for(lambda: _checkpoint_step(tmp_path) >= 5 and _job_id(tmp_path), 300, "first epoch")
        job = _job_id(tmp_path)
        subprocess.run(["scancel", "--signal=USR2", job], check=True)
        _finish(proc, tmp_path)
    finally:
        scheduler.cancel(list(scheduler.jobs_named(name)))
    metrics = _assert_resumed_and_equal(tmp_path, uninterrupted)
    # the signal arrived mid-epoch: the checkpoint it wrote is not an epoch end
    assert any(step % 5 for step in metrics["resumed_at_steps"]), metrics["resumed_at_steps"]
    logs = "".join(p.read_text() for p in (tmp_path / "hydra").rglob("*_log.*"))
    assert "Caught signal SIGUSR2" in logs and f"Requeued job {job}" in logs, logs[-3000:]


def test_partition_preemption_requeues_and_resumes_to_the_same_result(tmp_path, prepared_data, uninterrupted):
    """The run sits in the low-priority `preempt` partition; a job in `debug` that needs every
    core of the node preempts it (SIGTERM, then SLURM requeues it)."""
    require_cluster()
    proc, name = _submit(tmp_path, prepared_data, "preempt")
    blocker = ""
    try:
        wait_for(lambda: _checkpoint_step(tmp_path) >= 5 and _job_id(tmp_path), 300, "first epoch")
        job = _job_id(tmp_path)
        cpus = subprocess.run(["sinfo", "-h", "-o", "%c"], capture_output=True, text=True).stdout.split()[0]
        blocker = subprocess.run(
            ["sbatch", "--parsable", "-p", "debug", "-c", cpus, f"--job-name={name}-blocker",
             "-o", "/dev/null", "--wrap", "sleep 3"], capture_output=True, text=True, check=True).stdout.strip()
        wait_for(lambda: scheduler.job_states([job]).get(job) in ("PREEMPTED", "REQUEUED", "PENDING"), 60,
                 "preemption")
        _finish(proc, tmp_path)
    finally:
        scheduler.cancel([*scheduler.jobs_named(name), blocker] if blocker else list(scheduler.jobs_named(name)))
    _assert_resumed_and_equal(tmp_path, uninterrupted)
    assert scheduler.job_states([blocker])[blocker] == "COMPLETED"

