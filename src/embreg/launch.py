"""Sweeps: turn the ablation files into Hydra multiruns, launch them, watch the run directories.

Every ablation's arms, baselines and coefficient sweeps are collected into one plan; a run
shared by several ablations (same objective, same swept values, same seed) appears once, and a
run whose directory already holds a finished result with the current fingerprint is not
launched again.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm

from embreg.config import AblationConfig, RunConfig
from embreg.io import code_hash, write_json
from embreg.params import PipelineParams, compose_run, group_options
from embreg.run import read_status, run_dir, run_id


@dataclass(frozen=True)
class Job:
    objective: str
    seed: int
    sweep_key: str | None = None
    sweep_value: Any = None
    extra: tuple[str, ...] = ()  # the ablation's sweep_overrides, for sweep points

    def overrides(self) -> list[str]:
        ov = [f"objective={self.objective}", f"seed={self.seed}", *self.extra]
        if self.sweep_key:
            ov += [f"{self.sweep_key}={self.sweep_value}", f"tag_keys=[{self.sweep_key}]"]
        return ov


@dataclass
class Plan:
    profile: str
    ablations: dict[str, AblationConfig]
    jobs: list[Job] = field(default_factory=list)
    configs: dict[Job, RunConfig] = field(default_factory=dict)

    def run_ids(self) -> dict[Job, str]:
        return {j: run_id(c) for j, c in self.configs.items()}


def load_ablations(params: PipelineParams, names: list[str] | None = None) -> dict[str, AblationConfig]:
    names = names or group_options("ablation")
    out = {}
    for name in names:
        cfg = compose_run(params.profile, [*params.overrides, f"ablation={name}"])
        assert cfg.ablation is not None
        out[name] = cfg.ablation
    return out


def make_plan(params: PipelineParams, ablations: list[str] | None = None) -> Plan:
    """All (objective, seed[, swept value]) runs of the chosen ablations, deduplicated."""
    abls = load_ablations(params, ablations)
    jobs: list[Job] = []
    for abl in abls.values():
        for arm in [*abl.arms, *abl.baselines]:
            jobs += [Job(arm, s) for s in abl.seeds]
        for sw in abl.sweeps:
            extra = tuple(abl.sweep_overrides)
            jobs += [Job(sw["arm"], s, sw["key"], v, extra) for v in sw["values"] for s in abl.sweep_seeds]
    jobs = list(dict.fromkeys(jobs))  # keep order, drop duplicates
    plan = Plan(params.profile, abls, jobs)
    base = [*params.overrides, f"paths.data={params.data_dir}"]
    for job in jobs:
        plan.configs[job] = compose_run(params.profile, [*base, *job.overrides()])
    return plan


LAUNCHERS = ("local", "slurm")
SITE_FILE = "params.local.yaml"  # git-ignored site defaults for the launchers


def with_site_defaults(params: PipelineParams, path: str | Path = SITE_FILE) -> PipelineParams:
    """Merge the launcher sections of params.local.yaml (partition, account, ...) over
    params.yaml's: a site's cluster settings need not be committed."""
    if not Path(path).is_file():
        return params
    site = yaml.safe_load(Path(path).read_text()) or {}
    return dataclasses.replace(
        params,
        launcher=site.get("launcher", params.launcher),
        local={**params.local, **(site.get("local") or {})},
        slurm={**params.slurm, **(site.get("slurm") or {})},
    )


SLURM_KEYS = ("partition", "account", "qos", "nodes", "gpus_per_node", "tasks_per_node", "cpus_per_task",
              "mem_gb", "timeout_min", "constraint", "array_parallelism", "max_num_timeout")


def launcher_overrides(params: PipelineParams) -> tuple[list[str], int]:
    """Hydra overrides that pick and configure the launcher, and the torch threads per job."""
    if params.launcher == "slurm":
        ov = ["hydra/launcher=slurm"]
        for key in SLURM_KEYS:
            if params.slurm.get(key) is not None:
                ov.append(f"hydra.launcher.{key}={params.slurm[key]}")
        for key, value in (params.slurm.get("additional_parameters") or {}).items():
            ov.append(f"+hydra.launcher.additional_parameters.{key}={value}")
        return ov, int(params.slurm.get("cpus_per_task") or 1)
    parallel = int(params.local.get("max_parallel", 0)) or (os.cpu_count() or 1)
    return (["hydra/launcher=local", f"hydra.sweeper.max_batch_size={parallel}"],
            int(params.local.get("threads_per_job", 1)))


def multirun_commands(plan: Plan, jobs: list[Job], params: PipelineParams) -> list[list[str]]:
    """One Hydra multirun per group of jobs that share their swept key (objective x seed
    products; a finished member of a product returns at once)."""
    launcher, threads = launcher_overrides(params)
    groups: dict[tuple, dict[str, set]] = {}
    for j in jobs:
        g = groups.setdefault((j.sweep_key, j.objective if j.sweep_key else None, j.extra),
                              {"objective": set(), "seed": set(), "value": set()})
        g["objective"].add(j.objective)
        g["seed"].add(j.seed)
        if j.sweep_key:
            g["value"].add(j.sweep_value)
    cmds = []
    for (key, _, extra), g in groups.items():
        cmd = [sys.executable, "-m", "embreg.train", "--multirun", f"profile={plan.profile}",
               *params.overrides, f"paths.data={params.data_dir}",
               f"runtime.threads={threads}", "runtime.progress=false", *launcher,
               "objective=" + ",".join(o for o in dict.fromkeys(j.objective for j in jobs) if o in g["objective"]),
               "seed=" + ",".join(str(s) for s in sorted(g["seed"]))]
        if key:
            cmd += [f"{key}=" + ",".join(str(v) for v in sorted(g["value"])), f"tag_keys=[{key}]", *extra]
        cmds.append(cmd)
    return cmds


def states(plan: Plan) -> dict[Job, str]:
    """Each job's run state from its status file; a result from other config or code is 'stale'."""
    code = code_hash()
    out = {}
    for job, cfg in plan.configs.items():
        st = read_status(run_dir(cfg))
        state = st.get("state", "missing")
        if state == "done" and st.get("fingerprint") != cfg.fingerprint(code):
            state = "stale"
        out[job] = state
    return out


def pending(plan: Plan) -> list[Job]:
    """Jobs without a finished result for the current config and code."""
    return [job for job, state in states(plan).items() if state != "done"]


def watch(plan: Plan, stop: threading.Event, interval: float | None = None) -> None:
    """A progress bar over the plan's runs, from their status files, until ``stop``.
    On a terminal it refreshes every 5 s; in a log, once a minute."""
    interval = interval or (5.0 if sys.stderr.isatty() else 60.0)
    with tqdm(total=len(plan.jobs), desc=f"sweep {plan.profile}", unit="run", mininterval=0) as bar:
        while True:
            counts = Counter(states(plan).values())
            bar.n = counts["done"] + counts["failed"] + counts["diverged"]
            bar.set_postfix({k: counts[k] for k in ("running", "done", "failed", "diverged") if counts[k]},
                            refresh=False)
            bar.refresh()
            if stop.wait(interval):
                break


def write_manifest(plan: Plan, results_dir: Path) -> dict[str, Any]:
    """Which runs each ablation expects, and their final states (read by the analysis)."""
    ids, st = plan.run_ids(), states(plan)
    manifest = {"profile": plan.profile, "ablations": {}, "runs": {}}
    for name, abl in plan.ablations.items():
        manifest["ablations"][name] = {
            "title": abl.title, "question": abl.question, "arms": abl.arms,
            "baselines": abl.baselines, "seeds": abl.seeds, "sweep_seeds": abl.sweep_seeds,
            "sweeps": [{"arm": s["arm"], "key": s["key"], "values": list(s["values"]),
                        "runs": [f"{s['arm']}@{s['key'].split('.')[-1]}={v}" for v in s["values"]]}
                       for s in abl.sweeps],
        }
    for job, rid in ids.items():
        manifest["runs"].setdefault(rid, {})[str(job.seed)] = st[job]
    write_json(results_dir / "runs" / "manifest.json", manifest)
    return manifest


def _run_group(cmd: list[str], logf) -> int:
    """Run one multirun in its own process group, so that stopping the sweep (Ctrl-C, or a
    TERM from DVC) also stops the jobs it started instead of leaving them running."""
    proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        return proc.wait()
    except BaseException:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()
        raise


def launch(plan: Plan, params: PipelineParams, log: Path) -> int:
    """Run the pending jobs as Hydra multiruns through the chosen launcher (this machine, or
    SLURM job arrays); returns the worst exit code."""
    todo = pending(plan)
    if not todo:
        print(f"all {len(plan.jobs)} runs are up to date")
        return 0
    print(f"{len(todo)} of {len(plan.jobs)} runs to train ({len(plan.jobs) - len(todo)} up to date)")
    stop = threading.Event()
    watcher = threading.Thread(target=watch, args=(plan, stop), daemon=True)
    watcher.start()
    worst = 0
    log.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(log, "a") as logf:
            for cmd in multirun_commands(plan, todo, params):
                logf.write(f"\n$ {' '.join(cmd)}\n")
                logf.flush()
                worst = max(worst, _run_group(cmd, logf))
    finally:
        stop.set()
        watcher.join()
    return worst
