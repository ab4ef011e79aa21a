"""Data parallelism through the real code path on the project's SLURM cluster (`make slurm-up`):
one submitit job of two tasks, each calling ``embreg.distributed.init_from_env`` and taking
half of the batch, gives the whole batch's loss and gradients."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest
import submitit
import torch

from embreg import distributed as D
from embreg.config import ObjectiveConfig
from embreg.distributed import DistInfo
from embreg.params import compose_run
from tests.ddp_case import OBJECTIVES, SYNCS, Result, assert_matches_whole_batch, compute, compute_all
from tests.slurm.conftest import require_cluster

pytestmark = [pytest.mark.slurm, pytest.mark.ddp, pytest.mark.slow]

TASKS = 2
REPO = Path(__file__).resolve().parents[2]


def slurm_task(objectives: dict[str, ObjectiveConfig]) -> tuple[DistInfo, dict[tuple[str, str], Result]]:
    """What each task of the job runs; the job starts in the repository root, so it imports this
    module as ``tests.slurm.test_slurm_ddp``."""
    torch.set_num_threads(1)
    info = D.init_from_env("cpu")
    try:
        return info, compute_all(objectives, info)
    finally:
        torch.distributed.destroy_process_group()  # the group init_from_env joined


@pytest.fixture(scope="module")
def objectives() -> dict[str, ObjectiveConfig]:
    return {name: compose_run("smoke", [f"objective={name}"]).objective for name in OBJECTIVES}


@pytest.fixture(scope="module")
def job(tmp_path_factory, objectives) -> submitit.Job:
    require_cluster()
    executor = submitit.AutoExecutor(folder=tmp_path_factory.mktemp("slurm_ddp"), cluster="slurm")
    executor.update_parameters(slurm_partition="debug", nodes=1, tasks_per_node=TASKS, cpus_per_task=1,
                               mem_gb=2, timeout_min=5, name="embreg-ddp-test",
                               slurm_setup=[f"cd {REPO}"])
    job = executor.submit(partial(slurm_task, objectives))
    job.results()  # waits; raises with the tasks' stderr if one failed
    return job


def test_each_task_is_a_rank(job):
    infos = [info for info, _ in job.results()]
    assert infos == [DistInfo(rank=r, world_size=TASKS, local_rank=r) for r in range(TASKS)]


@pytest.mark.parametrize("sync", SYNCS)
@pytest.mark.parametrize("name", OBJECTIVES)
def test_tasks_match_the_whole_batch(job, objectives, name, sync):
    whole = compute(objectives[name], DistInfo(), sync)
    assert_matches_whole_batch([cases[(name, sync)] for _, cases in job.results()], whole)


def test_job_completed_in_accounting(job):
    """sacct records the job COMPLETED (the record can lag the results by a moment)."""
    for _ in range(30):
        acct = subprocess.run(["sacct", "-n", "-X", "-o", "JobID,State", "-j", job.job_id],
                              capture_output=True, text=True, check=True).stdout
        if "COMPLETED" in acct:
            break
        time.sleep(1)
    assert acct.split()[1:] == ["COMPLETED"], acct


def test_a_run_trains_with_two_tasks_through_the_launcher(tmp_path, prepared_data):
    """A whole run (pretrain + evaluation) as one SLURM job of two tasks through
    hydra-submitit-launcher: both ranks train in lockstep (no hang), rank 0 alone writes the
    run directory and checkpoint."""
    require_cluster()
    cmd = [sys.executable, "-m", "embreg.train", "--multirun", "profile=smoke", "objective=vicreg_all", "seed=0",
           f"paths.data={prepared_data}", f"paths.results={tmp_path}/results", f"paths.checkpoints={tmp_path}/ckpt",
           "runtime.threads=1", "runtime.progress=false", "hydra/launcher=slurm", "hydra.launcher.tasks_per_node=2",
           "hydra.launcher.name=embreg-ddp-run-test", f"hydra.sweep.dir={tmp_path}/hydra"]
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    rd = tmp_path / "results" / "runs" / "vicreg_all" / "seed0"
    status = json.loads((rd / "status.json").read_text())
    assert status["state"] == "done" and status["world_size"] == 2, status
    history = json.loads((rd / "history.json").read_text())
    assert len(history) == 2 and all(math.isfinite(h["loss"]) for h in history)
    metrics = json.loads((rd / "metrics.json").read_text())
    assert 0 <= metrics["linear_top1"] <= 100
    assert (tmp_path / "ckpt" / "vicreg_all" / "seed0" / "last.pt").is_file()
