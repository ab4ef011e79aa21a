"""What the sweep's jobs get from this machine or the cluster, from the profile's device: GPUs,
jobs at once, CPUs and torch threads; and the launcher settings that cannot run the profile.

Torch-free (the sweep never loads torch): the GPUs are counted from CUDA_VISIBLE_DEVICES when it
is set, else from ``nvidia-smi -L``. On a CPU profile every setting left unset keeps the values
the committed results were trained with (local: 2 jobs at once, 1 thread each; SLURM: 0 GPUs,
1 CPU, 4 GB); launcher settings never change what a run computes.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
from dataclasses import dataclass

from embreg.params import LocalParams, PipelineParams, SlurmParams

CPU_LOCAL = {"max_parallel": 2, "threads_per_job": 1}  # a CPU profile's unset local keys
CPU_SLURM = {"gpus_per_node": 0, "cpus_per_task": 1, "mem_gb": 4}  # ... and SLURM keys
_GPU_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9/_:-]*$")  # an index, or a GPU-/MIG- UUID


def device_type(device: str) -> str:
    """"cuda:1" -> "cuda"; "cpu", "mps" as they are."""
    return str(device).split(":", 1)[0]


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them: its entries when it is
    set (CUDA stops at an empty or negative entry, and so do we), else the indices ``nvidia-smi
    -L`` lists; none when there is no driver."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        out = []
        for entry in (e.strip() for e in listed.split(",")):
            if not entry or entry.startswith("-") or not _GPU_ID.match(entry):
                break
            out.append(entry)
        return out
    try:
        res = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return []
    return re.findall(r"^GPU (\d+):", res.stdout, re.M) if res.returncode == 0 else []


def cores() -> int:
    """The cores this process may run on (its affinity: a cgroup or taskset limit counts)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Lane:
    """Multiruns run one after another, beside the other lanes: on a cuda profile, one GPU's."""

    gpu: str | None  # CUDA_VISIBLE_DEVICES of its jobs; None: no GPU (a CPU profile)
    batch: int  # its jobs at once (hydra.sweeper.max_batch_size)


def local_problems(local: LocalParams, profile: str, gpus: list[str]) -> list[str]:
    """Why the local launcher cannot run a cuda profile on a machine showing ``gpus``."""
    if not gpus:
        where = os.environ.get("CUDA_VISIBLE_DEVICES")
        shown = f"CUDA_VISIBLE_DEVICES={where!r} lists" if where is not None else "nvidia-smi -L finds"
        return [f"local.gpus={local.gpus}: profile {profile} trains on cuda, and this machine has no GPU to give "
                f"its runs ({shown} none); run it where one is visible, with launcher: slurm, or pick a CPU profile"]
    if local.gpus > len(gpus):
        return [f"local.gpus={local.gpus}: this machine shows {len(gpus)} GPU(s) ({', '.join(gpus)}); "
                f"must be <= {len(gpus)}, or 0 for every visible one"]
    return []


def local_layout(local: LocalParams, device: str, n_jobs: int, profile: str = "",
                 gpus: list[str] | None = None, ncores: int | None = None) -> tuple[list[Lane], int]:
    """The lanes the local launcher runs side by side, and the torch threads of each job.

    CPU profile: one lane of ``max_parallel`` jobs (unset: 2; 0: one per core), ``threads_per_job``
    threads (unset: 1), as always. Cuda profile: one lane per GPU used (the first ``gpus``
    visible, 0: all), each running ``jobs_per_gpu`` jobs on its GPU; or ``max_parallel`` jobs
    at once split over the GPUs; and the machine's cores divided among every job running at
    once (unset ``threads_per_job``), never all cores per job."""
    if device_type(device) != "cuda":
        parallel = CPU_LOCAL["max_parallel"] if local.max_parallel is None else local.max_parallel
        threads = CPU_LOCAL["threads_per_job"] if local.threads_per_job is None else local.threads_per_job
        return [Lane(None, parallel or (os.cpu_count() or 1))], threads
    gpus = visible_gpus() if gpus is None else gpus
    found = local_problems(local, profile, gpus)
    if found:
        from embreg.checks import ConfigError

        raise ConfigError("\n".join(found))
    use = gpus[:local.gpus] if local.gpus else gpus
    if local.max_parallel:  # jobs at once over every GPU: at least one each, the rest spread
        lanes = min(len(use), local.max_parallel, max(1, n_jobs))
        base, extra = divmod(local.max_parallel, lanes)
        batches = [base + (i < extra) for i in range(lanes)]
    else:
        batches = [local.jobs_per_gpu] * min(len(use), max(1, n_jobs))
    at_once = max(1, min(sum(batches), n_jobs))
    threads = local.threads_per_job or max(1, (cores() if ncores is None else ncores) // at_once)
    return [Lane(g, b) for g, b in zip(use, batches, strict=False)], threads


def slurm_resources(slurm: SlurmParams, device: str) -> SlurmParams:
    """``slurm`` with its unset resources filled in for the profile's device. CPU: as always (0
    GPUs, 1 CPU, 4 GB). Cuda: one GPU per task (DDP rank), ``cpus_per_gpu`` CPUs for each of a
    task's GPUs and ``mem_gb_per_gpu`` GB for each GPU of the node."""
    if device_type(device) != "cuda":
        return dataclasses.replace(slurm, **{k: v for k, v in CPU_SLURM.items() if getattr(slurm, k) is None})
    gpus = slurm.tasks_per_node if slurm.gpus_per_node is None else slurm.gpus_per_node
    per_task = max(1, gpus // slurm.tasks_per_node)
    return dataclasses.replace(
        slurm, gpus_per_node=gpus,
        cpus_per_task=slurm.cpus_per_task if slurm.cpus_per_task is not None else slurm.cpus_per_gpu * per_task,
        mem_gb=slurm.mem_gb if slurm.mem_gb is not None else slurm.mem_gb_per_gpu * max(1, gpus))


def slurm_problems(slurm: SlurmParams, profile: str) -> list[str]:
    """Why SLURM jobs with ``slurm`` cannot train a cuda profile: one DDP rank per GPU."""
    tasks, gpus = slurm.tasks_per_node, slurm.gpus_per_node
    if gpus == 0:
        return [f"slurm.gpus_per_node=0: profile {profile} trains on cuda, one GPU per task; must be >= "
                f"slurm.tasks_per_node ({tasks}), or null for one GPU per task"]
    if gpus is not None and tasks > gpus:
        return [f"slurm.tasks_per_node={tasks}: profile {profile} runs one DDP rank per GPU and "
                f"slurm.gpus_per_node is {gpus}; must be <= {gpus} (or gpus_per_node null: one GPU per task)"]
    return []


def launcher_problems(params: PipelineParams, device: str, gpus: list[str] | None = None) -> list[str]:
    """Each launcher setting that cannot run a profile on ``device``, one line: key, value and
    what is allowed. A CPU profile runs on any (DDP over several CPU tasks included)."""
    if device_type(device) != "cuda":
        return []
    if params.launcher == "slurm":
        return slurm_problems(params.slurm, params.profile)
    return local_problems(params.local, params.profile, visible_gpus() if gpus is None else gpus)
