"""The launchers on a cuda profile: each run gets a GPU, the jobs at once and torch
threads come from the GPUs and cores, SLURM asks for GPUs, CPUs and memory to match, and the
settings that cannot run the profile fail in one line each before anything is launched. On a
fake machine (CUDA_VISIBLE_DEVICES, a fake nvidia-smi), with submitit's real executors."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import submitit
from hydra import compose, initialize_config_dir
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from omegaconf import OmegaConf

from embreg.checks import ConfigError
from embreg.config import register_configs
from embreg.params import LocalParams, PipelineParams, SlurmParams, conf_dir, register_resolvers
from embreg.sweep import resources
from embreg.sweep.commands import lane_overrides, multirun_commands, multirun_lanes, slurm_overrides
from embreg.sweep.launch import _run_lanes, launch
from embreg.sweep.plan import make_plan, validate_plan
from embreg.sweep.resources import Lane, launcher_problems, local_layout, slurm_resources, visible_gpus


@pytest.fixture(scope="module")
def cuda_plan():
    """The cifar10 profile's (device: cuda) layer ablation: 4 arms and 3 references x 3 seeds,
    and two layer-weight points."""
    return make_plan(PipelineParams(profile="cifar10", data_dir="data"), ["layers"])


@pytest.fixture
def machine(monkeypatch):
    """A fake machine: ``machine(gpus, cores)`` sets CUDA_VISIBLE_DEVICES and the cores."""
    def make(gpus: str, cores: int = 24) -> None:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", gpus)
        monkeypatch.setattr(resources, "cores", lambda: cores)
    return make


def arg(cmd: list[str], key: str) -> str | None:
    return next((a.split("=", 1)[1] for a in cmd if a.startswith(key + "=")), None)


def runs(cmd: list[str]) -> set[tuple]:
    """The (arm, seed, swept value) runs a multirun sweeps (its product)."""
    key = arg(cmd, "tag_keys")
    values = arg(cmd, key[1:-1]).split(",") if key else [None]
    return {(a, int(s), v) for a in arg(cmd, "objective").split(",") for s in arg(cmd, "seed").split(",")
            for v in values}


def expected(plan) -> set[tuple]:
    return {(j.arm, j.seed, None if j.sweep_key is None else str(j.sweep_value)) for j in plan.jobs}


# ------------------------------------------------------------------ local: GPUs, jobs, threads
def test_one_gpu_is_shared_by_jobs_per_gpu_runs_with_the_cores_divided(cuda_plan, machine):
    machine("0", cores=24)
    lanes = multirun_lanes(cuda_plan, cuda_plan.jobs, PipelineParams(profile="cifar10"))
    assert len(lanes) == 1
    for cmd in lanes[0]:
        assert "hydra.launcher.gpus_per_node=1" in cmd  # today: 0, and the job sees CUDA_VISIBLE_DEVICES=""
        assert "+hydra.launcher.setup=['export CUDA_VISIBLE_DEVICES=0']" in cmd
        assert arg(cmd, "hydra.sweeper.max_batch_size") == "3"
        assert arg(cmd, "runtime.threads") == "8"  # 24 cores / 3 runs at once
        assert arg(cmd, "hydra.sweep.subdir") is None
    assert set().union(*map(runs, lanes[0])) == expected(cuda_plan)


def test_two_gpus_get_one_multirun_lane_each_and_disjoint_runs(cuda_plan, machine):
    machine("2,5", cores=24)  # the GPUs this process was given: not 0 and 1
    lanes = multirun_lanes(cuda_plan, cuda_plan.jobs, PipelineParams(profile="cifar10"))
    assert len(lanes) == 2
    for gpu, lane in zip(("2", "5"), lanes, strict=True):
        for cmd in lane:
            assert f"+hydra.launcher.setup=['export CUDA_VISIBLE_DEVICES={gpu}']" in cmd
            assert arg(cmd, "hydra.sweeper.max_batch_size") == "3"
            assert arg(cmd, "runtime.threads") == "4"  # 24 cores / (2 GPUs x 3 runs)
        assert len({arg(cmd, "hydra.sweep.subdir") for cmd in lane}) == 1
    first, second = (set().union(*map(runs, lane)) for lane in lanes)
    assert not first & second and first | second == expected(cuda_plan)  # no run trained twice
    assert abs(len(first) - len(second)) <= 3
    assert arg(lanes[0][0], "hydra.sweep.subdir") != arg(lanes[1][0], "hydra.sweep.subdir")


def test_the_user_settings_win_over_the_sizing(cuda_plan, machine):
    machine("0,1,2", cores=2)
    local = LocalParams(max_parallel=5, threads_per_job=2, gpus=2)
    lanes = multirun_lanes(cuda_plan, cuda_plan.jobs, PipelineParams(profile="cifar10", local=local))
    assert [arg(lane[0], "hydra.sweeper.max_batch_size") for lane in lanes] == ["3", "2"]
    assert {arg(cmd, "runtime.threads") for lane in lanes for cmd in lane} == {"2"}
    assert "+hydra.launcher.setup=['export CUDA_VISIBLE_DEVICES=2']" not in str(lanes)  # gpus: 2 of 3
    assert local_layout(LocalParams(), "cuda", n_jobs=1, gpus=["0", "1"], ncores=16) == ([Lane("0", 3)], 16)


def test_a_cpu_profile_runs_as_before_on_a_gpu_machine(machine):
    machine("0,1", cores=24)
    plan = make_plan(PipelineParams(profile="default"), ["layers"])
    cmds = multirun_commands(plan, plan.jobs, PipelineParams(profile="default"))
    for cmd in cmds:
        assert cmd[cmd.index("runtime.threads=1"):][:5] == [
            "runtime.threads=1", "runtime.progress=false", "runtime.replace=true", "hydra/launcher=local",
            "hydra.sweeper.max_batch_size=2"]
        assert not any("gpus_per_node" in a or "setup" in a or "subdir" in a for a in cmd)
    assert local_layout(LocalParams(max_parallel=0), "cpu", 10) == ([Lane(None, os.cpu_count())], 1)


def test_gpus_are_counted_without_torch(tmp_path, monkeypatch):
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-aa)'\n"
                   "echo 'GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-bb)'\n")
    smi.chmod(0o755)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert visible_gpus() == ["0", "1"]
    smi.unlink()
    assert visible_gpus() == []  # no driver
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-bb,3,-1,4")  # CUDA stops at the first invalid entry
    assert visible_gpus() == ["GPU-bb", "3"]


def _executor(overrides: list[str], folder: Path, cluster: str) -> submitit.AutoExecutor:
    """The executor hydra-submitit-launcher builds for a multirun with ``overrides`` (its
    launch(), step by step: the composed hydra.launcher config, its keys prefixed as it does)."""
    register_configs()
    register_resolvers()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = compose("config", overrides=["profile=cifar10", *overrides], return_hydra_config=True)
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    for key in ("_target_", "submitit_folder", "name"):
        params.pop(key)
    init = {f"{cluster}_max_num_timeout": params.pop("max_num_timeout")} if "max_num_timeout" in params else {}
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster, **init)
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"{cluster}_{k}": v for k, v in params.items()})
    return executor


def test_a_local_job_sees_its_lanes_gpu(tmp_path):
    """A real submitit local job, with the launcher settings of the second GPU's lane and of a
    CPU profile: CUDA_VISIBLE_DEVICES as the job's process sees it."""
    seen = {}
    for name, overrides in (("gpu", lane_overrides(Lane("5", 3), 1, 2)), ("cpu", lane_overrides(Lane(None, 2), 0, 1))):
        executor = _executor(overrides, tmp_path / name, "local")
        job = executor.submit(submitit.helpers.CommandFunction(["printenv", "CUDA_VISIBLE_DEVICES"]))
        seen[name] = job.result().strip()
    assert seen == {"gpu": "5", "cpu": ""}


def test_lanes_run_side_by_side_and_their_multiruns_in_turn(tmp_path):
    """Lane 0's first multirun waits for a file lane 1's writes: only side by side can it end."""
    flag, order = tmp_path / "flag", tmp_path / "order"
    py = [sys.executable, "-c"]
    wait = (f"import pathlib, time\nfor _ in range(200):\n    if pathlib.Path({str(flag)!r}).exists(): break\n"
            f"    time.sleep(0.05)\nelse: raise SystemExit(9)\nopen({str(order)!r}, 'a').write('a1 ')")
    lanes = [[[*py, wait], [*py, f"open({str(order)!r}, 'a').write('a2 ')"]],
             [[*py, f"open({str(flag)!r}, 'w').close(); raise SystemExit(3)"]]]
    with open(tmp_path / "log", "w") as logf:
        assert _run_lanes(lanes, logf, poll=0.05) == 3
    assert order.read_text() == "a1 a2 "


# ------------------------------------------------------------------------ SLURM on a cuda profile
def test_slurm_asks_for_a_gpu_per_task_with_its_cpus_and_memory(cuda_plan):
    params = PipelineParams(profile="cifar10", launcher="slurm", slurm=SlurmParams(tasks_per_node=2))
    cmd = multirun_commands(cuda_plan, cuda_plan.jobs, params)[0]
    assert (arg(cmd, "hydra.launcher.gpus_per_node"), arg(cmd, "hydra.launcher.cpus_per_task"),
            arg(cmd, "hydra.launcher.mem_gb"), arg(cmd, "runtime.threads")) == ("2", "8", "64", "8")
    assert arg(cmd, "+hydra.launcher.srun_args") == "['--cpus-per-task=8']"
    assert not any("per_gpu" in a for a in cmd)  # ours, not sbatch's --cpus-per-gpu
    mine = SlurmParams(gpus_per_node=4, tasks_per_node=2, cpus_per_task=6, mem_gb=100)
    assert slurm_resources(mine, "cuda") == mine  # what the user set stays
    two_each = slurm_resources(SlurmParams(gpus_per_node=4, tasks_per_node=2), "cuda")
    assert (two_each.cpus_per_task, two_each.mem_gb) == (16, 128)  # 2 GPUs per task, 4 on the node
    # a CPU profile: 0 GPUs, 1 CPU, 4 GB, as the committed results ran
    cpu = slurm_resources(SlurmParams(), "cpu")
    assert (cpu.gpus_per_node, cpu.cpus_per_task, cpu.mem_gb) == (0, 1, 4)


def test_slurm_batch_script_passes_the_cpus_to_srun(tmp_path, monkeypatch):
    """The sbatch script submitit writes from these overrides (a fake srun: no cluster here)."""
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\n")
    (tmp_path / "bin" / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    overrides, threads = slurm_overrides(PipelineParams(profile="cifar10", launcher="slurm"), "cuda")
    executor = _executor(overrides, tmp_path / "jobs", "slurm")
    script = executor._executor._make_submission_file_text("python -m x", "uid")
    assert "#SBATCH --gpus-per-node=1" in script and "#SBATCH --cpus-per-task=8" in script
    assert "#SBATCH --mem=32GB" in script and threads == 8
    assert next(line for line in script.splitlines() if line.startswith("srun ")).count("--cpus-per-task=8") == 1


# ------------------------------------------------------------------------------ validation
@pytest.mark.parametrize("params, gpus, line", [
    (PipelineParams(profile="cifar10", launcher="slurm", slurm=SlurmParams(gpus_per_node=0)), None,
     "slurm.gpus_per_node=0: profile cifar10 trains on cuda, one GPU per task; must be >= slurm.tasks_per_node (1), "
     "or null for one GPU per task"),
    (PipelineParams(profile="cifar10", launcher="slurm", slurm=SlurmParams(tasks_per_node=4, gpus_per_node=2)), None,
     "slurm.tasks_per_node=4: profile cifar10 runs one DDP rank per GPU and slurm.gpus_per_node is 2; must be <= 2 "
     "(or gpus_per_node null: one GPU per task)"),
    (PipelineParams(profile="cifar10", local=LocalParams(gpus=3)), ["0", "1"],
     "local.gpus=3: this machine shows 2 GPU(s) (0, 1); must be <= 2, or 0 for every visible one"),
    (PipelineParams(profile="cifar10"), [],
     "local.gpus=0: profile cifar10 trains on cuda, and this machine has no GPU to give its runs "
     "(CUDA_VISIBLE_DEVICES='' lists none); run it where one is visible, with launcher: slurm, or pick a CPU profile"),
])
def test_each_launcher_problem_is_one_line(monkeypatch, params, gpus, line):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert launcher_problems(params, "cuda", gpus) == [line]
    assert launcher_problems(params, "cpu", gpus) == []  # a CPU profile runs anywhere


def test_no_gpu_found_by_nvidia_smi_is_said_so(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    [line] = launcher_problems(PipelineParams(profile="cifar10"), "cuda")
    assert "(nvidia-smi -L finds none)" in line


def test_a_cpu_profile_may_ask_for_ddp_tasks_without_gpus():
    params = PipelineParams(profile="default", launcher="slurm", slurm=SlurmParams(tasks_per_node=2))
    assert launcher_problems(params, "cpu") == []


def test_a_cuda_sweep_without_a_gpu_fails_before_anything_is_written(prepared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    params = PipelineParams(profile="smoke", data_dir=str(prepared_data), overrides=[
        f"paths.results={tmp_path}/results", f"paths.checkpoints={tmp_path}/ckpt", "profile.device=cuda"])
    plan = make_plan(params, ["layers"])
    line = ("local.gpus=0: profile smoke trains on cuda, and this machine has no GPU to give its runs "
            "(CUDA_VISIBLE_DEVICES='' lists none); run it where one is visible, with launcher: slurm, or pick a CPU profile")
    with pytest.raises(ConfigError) as err:
        validate_plan(plan)  # the params that made the plan
    assert str(err.value) == line
    with pytest.raises(ConfigError, match="^local.gpus=0: "):
        launch(plan, params, tmp_path / "logs" / "sweep.log")
    assert not (tmp_path / "logs").exists() and not (tmp_path / "results").exists()
    # on a machine with a GPU the same plan validates
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    validate_plan(plan)


@pytest.mark.slow
def test_two_gpu_lanes_train_every_run_once_through_real_multiruns(prepared_data, tmp_path, monkeypatch):
    """The smoke runs (CPU) laid out as on a 2-GPU machine: two lanes of real Hydra multiruns
    through submitit's local executor, side by side, each run trained by exactly one."""
    from embreg.sweep import commands

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.setattr(commands, "plan_device", lambda plan, jobs=None: "cuda")
    monkeypatch.chdir(tmp_path)  # Hydra's outputs/
    params = PipelineParams(profile="smoke", data_dir=str(prepared_data), local=LocalParams(jobs_per_gpu=2),
                            overrides=[f"paths.results={tmp_path}/results", f"paths.checkpoints={tmp_path}/ckpt"])
    plan = make_plan(params, ["layers"])
    assert launch(plan, params, tmp_path / "sweep.log") == 0
    statuses = [json.loads(p.read_text()) for p in (tmp_path / "results" / "runs").glob("*/seed0/status.json")]
    assert len(statuses) == len(plan.jobs) and {s["state"] for s in statuses} == {"done"}
    assert len({s["job_id"] for s in statuses}) == len(plan.jobs)  # one job each
    log = (tmp_path / "sweep.log").read_text()
    started = [line for line in log.splitlines() if line.startswith("$ ")]
    assert {"CUDA_VISIBLE_DEVICES=0" in line for line in started} == {True, False}
    assert "Traceback" not in log
