"""The Hydra multiruns of ``embreg.train`` that train a sweep's runs: the jobs as products (arms x
seeds x swept values) and the launcher's overrides, in lanes run side by side (on this machine,
one per GPU of a cuda profile), each job's GPU, jobs at once and torch threads sized by
embreg.sweep.resources.
"""

from __future__ import annotations

import dataclasses
import sys

from embreg.params import PipelineParams
from embreg.sweep.plan import Job, Plan, plan_device
from embreg.sweep.resources import Lane, local_layout, slurm_resources


def slurm_overrides(params: PipelineParams, device: str = "cpu") -> tuple[list[str], int]:
    """Hydra overrides that pick and configure the SLURM launcher, with the unset resources
    sized for the profile's device, and the torch threads per job (its CPUs)."""
    slurm = slurm_resources(params.slurm, device)
    ov = ["hydra/launcher=slurm"]
    for f in dataclasses.fields(slurm):
        value = getattr(slurm, f.name)
        if f.name in ("cpus_per_gpu", "mem_gb_per_gpu", "detach"):
            continue  # ours: folded into cpus_per_task and mem_gb; how the sweep waits
        if f.name == "additional_parameters":
            ov += [f"+hydra.launcher.additional_parameters.{k}={v}" for k, v in value.items()]
        elif value is not None:
            ov.append(f"hydra.launcher.{f.name}={value}")
    # srun inherits no --cpus-per-task from sbatch on SLURM 22.05-23.02: each task would get one CPU
    ov.append(f"+hydra.launcher.srun_args=['--cpus-per-task={slurm.cpus_per_task}']")
    return ov, int(slurm.cpus_per_task or 1)


def lane_overrides(lane: Lane, index: int, lanes: int) -> list[str]:
    """Hydra overrides that run a lane's multirun on this machine: its jobs at once and, on a
    cuda profile, its GPU for every job (submitit's local executor would export
    CUDA_VISIBLE_DEVICES=0, counted from the machine's first GPU: its setup names the lane's) and
    how many runs share it (``runtime.jobs_per_gpu``: each run's share of the GPU's data budget)."""
    ov = ["hydra/launcher=local", f"hydra.sweeper.max_batch_size={lane.batch}"]
    if lane.gpu is not None:
        ov += ["hydra.launcher.gpus_per_node=1", f"+hydra.launcher.setup=['export CUDA_VISIBLE_DEVICES={lane.gpu}']",
               f"runtime.jobs_per_gpu={lane.batch}"]  # the runs sharing its GPU: each keeps its share of it
        if lanes > 1:  # multiruns started in the same second share hydra.sweep.dir
            ov.append(f"hydra.sweep.subdir=gpu{index}-${{hydra.job.num}}")
    return ov


@dataclasses.dataclass(frozen=True)
class Product:
    """Jobs one Hydra multirun sweeps: arms x seeds (x swept values of ``key``)."""

    key: str | None
    extra: tuple[str, ...]
    arms: tuple[str, ...]
    seeds: tuple[int, ...]
    values: tuple = ()

    def size(self) -> int:
        return len(self.arms) * len(self.seeds) * max(1, len(self.values))

    def split(self, n: int) -> list[Product]:
        """At most ``n`` disjoint products covering this one, cut along its longest axis."""
        axis = max(("arms", "seeds", "values"), key=lambda a: len(getattr(self, a)))
        items = getattr(self, axis)
        k = max(1, min(n, len(items)))
        return [dataclasses.replace(self, **{axis: items[i::k]}) for i in range(k)]


def products(jobs: list[Job]) -> list[Product]:
    """The jobs as products that share their swept key (a finished member returns at once)."""
    order = list(dict.fromkeys(j.arm for j in jobs))
    groups: dict[tuple, dict[str, set]] = {}
    for j in jobs:
        g = groups.setdefault((j.sweep_key, j.arm if j.sweep_key else None, j.extra),
                              {"arm": set(), "seed": set(), "value": set()})
        g["arm"].add(j.arm)
        g["seed"].add(j.seed)
        if j.sweep_key:
            g["value"].add(j.sweep_value)
    return [Product(key, extra, tuple(a for a in order if a in g["arm"]), tuple(sorted(g["seed"])),
                    tuple(sorted(g["value"]))) for (key, _, extra), g in groups.items()]


def spread(prods: list[Product], lanes: list[Lane]) -> list[list[Product]]:
    """The products cut into disjoint pieces and dealt to the lanes, biggest piece first to the
    lane whose jobs at once would finish its share soonest; each lane keeps the plan's order.
    One lane: the products as they are."""
    if len(lanes) == 1:
        return [prods]
    pieces = [(i, k, p) for i, prod in enumerate(prods) for k, p in enumerate(prod.split(len(lanes)))]
    load = [0] * len(lanes)
    dealt: list[list[tuple]] = [[] for _ in lanes]
    for i, k, p in sorted(pieces, key=lambda t: -t[2].size()):
        best = min(range(len(lanes)), key=lambda n: ((load[n] + p.size()) / lanes[n].batch, n))
        load[best] += p.size()
        dealt[best].append((i, k, p))
    return [[p for _, _, p in sorted(d, key=lambda t: t[:2])] for d in dealt]


def _command(plan: Plan, params: PipelineParams, prod: Product, launcher: list[str], threads: int) -> list[str]:
    cmd = [sys.executable, "-m", "embreg.train", "--multirun", f"profile={plan.profile}",
           *params.overrides, f"paths.data={params.data_dir}",
           f"runtime.threads={threads}", "runtime.progress=false", "runtime.replace=true", *launcher,
           "objective=" + ",".join(prod.arms), "seed=" + ",".join(str(s) for s in prod.seeds)]
    if prod.key:
        cmd += [f"{prod.key}=" + ",".join(str(v) for v in prod.values), f"tag_keys=[{prod.key}]", *prod.extra]
    return cmd


def multirun_lanes(plan: Plan, jobs: list[Job], params: PipelineParams) -> list[list[list[str]]]:
    """The Hydra multiruns that train ``jobs``, in lanes: a lane's multiruns run one after
    another, the lanes side by side. SLURM: one lane (its arrays are submitted at once). This
    machine: one lane on a CPU profile; one per GPU used on a cuda profile."""
    prods, device = products(jobs), plan_device(plan)
    if params.launcher == "slurm":
        launcher, threads = slurm_overrides(params, device)
        return [[_command(plan, params, p, launcher, threads) for p in prods]]
    lanes, threads = local_layout(params.local, device, len(jobs), plan.profile)
    return [[_command(plan, params, p, lane_overrides(lane, i, len(lanes)), threads) for p in share]
            for i, (lane, share) in enumerate(zip(lanes, spread(prods, lanes), strict=True)) if share]


def multirun_commands(plan: Plan, jobs: list[Job], params: PipelineParams) -> list[list[str]]:
    """Every multirun of ``multirun_lanes``, lane after lane."""
    return [cmd for lane in multirun_lanes(plan, jobs, params) for cmd in lane]
