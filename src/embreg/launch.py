"""Sweeps: turn the ablation files into Hydra multiruns, launch them, watch the run directories.

Every ablation's arms, baselines and coefficient sweeps are collected into one plan; a run
shared by several ablations (same objective, same swept values, same seed) appears once, and a
run whose directory already holds a finished result with the current fingerprint is not
launched again.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm

from embreg import scheduler
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


def ablation_jobs(abl: AblationConfig) -> list[Job]:
    """One ablation's runs: its arms and baselines x seeds, then its sweep points x sweep seeds."""
    jobs = [Job(arm, s) for arm in [*abl.arms, *abl.baselines] for s in abl.seeds]
    extra = tuple(abl.sweep_overrides)
    jobs += [Job(sw["arm"], s, sw["key"], v, extra) for sw in abl.sweeps for v in sw["values"]
             for s in abl.sweep_seeds]
    return list(dict.fromkeys(jobs))


def make_plan(params: PipelineParams, ablations: list[str] | None = None) -> Plan:
    """All (objective, seed[, swept value]) runs of the chosen ablations, deduplicated."""
    abls = load_ablations(params, ablations)
    # keep order, drop duplicates: a run shared by two ablations is trained once
    jobs = list(dict.fromkeys(job for abl in abls.values() for job in ablation_jobs(abl)))
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


FINISHED = ("done", "failed", "diverged", "cancelled", "timeout", "node_fail", "out_of_memory")


def watch(plan: Plan, stop: threading.Event, interval: float | None = None) -> None:
    """A progress bar over the plan's runs, from their status files, until ``stop``: how many
    are pending (queued on SLURM), running, done, failed. On a terminal it refreshes every 5 s;
    in a log, once a minute."""
    interval = interval or (5.0 if sys.stderr.isatty() else 60.0)
    with tqdm(total=len(plan.jobs), desc=f"sweep {plan.profile}", unit="run", mininterval=0) as bar:
        while True:
            counts = Counter(states(plan).values())
            counts["pending"] = counts.pop("queued", 0)
            bar.n = sum(counts[k] for k in FINISHED)
            bar.set_postfix({k: v for k, v in counts.items() if v and k not in ("missing", "stale")},
                            refresh=False)
            bar.refresh()
            if stop.wait(interval):
                break


def failed_runs(plan: Plan) -> list[dict[str, str]]:
    """One row per run without a finished result: state, run, seed, error and where to look
    (the job's log when a scheduler ran it, else the run's error.txt)."""
    rows = []
    for job, state in states(plan).items():
        if state == "done":
            continue
        rd = run_dir(plan.configs[job])
        st = read_status(rd)
        error = str(st.get("error") or "").splitlines()
        log = st.get("log") or (str(rd / "error.txt") if (rd / "error.txt").is_file() else "")
        rows.append({"state": state, "run": run_id(plan.configs[job]), "seed": job.seed,
                     "error": (error[0][:70] if error else ""), "log": log})
    return rows


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


def _run_groups(cmds: list[list[str]], logf, sweep: str | None = None, n_jobs: int = 0,
                poll: float = 5.0) -> list[int]:
    """Run multiruns side by side, each in its own process group (so that stopping the sweep,
    by Ctrl-C or a TERM from DVC, also stops the jobs they started), and wait for all; for a
    SLURM ``sweep``, until the scheduler has none of its jobs active. Stopping the sweep stops
    them and cancels the SLURM jobs of ``sweep``."""
    procs = []
    try:
        for cmd in cmds:
            logf.write(f"\n$ {' '.join(cmd)}\n")
            logf.flush()
            procs.append(subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True))
        if sweep:
            return _await_multiruns(procs, sweep, n_jobs, poll)
        return [p.wait() for p in procs]
    except BaseException:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            p.wait()
        if sweep:
            scheduler.cancel(list(scheduler.jobs_named(sweep)))
        raise


def _mark_queued(plan: Plan, jobs: list[Job], sweep: str) -> None:
    """A 'queued' status for each job about to be submitted: until a job starts, this is how
    the progress bar and `embreg status` know it is pending, and how a job cancelled before
    it started is told from one never submitted."""
    for job in jobs:
        cfg = plan.configs[job]
        write_json(run_dir(cfg) / "status.json",
                   {"run_id": run_id(cfg), "arm": cfg.arm, "seed": cfg.seed, "state": "queued", "sweep": sweep})


def _await_multiruns(procs: list[subprocess.Popen], sweep: str, n_jobs: int, poll: float) -> list[int]:
    """Wait for the multiruns and for SLURM to have none of the sweep's jobs active (a
    multirun whose job was cancelled ends early, while the rest of its array still runs), but
    no longer than SLURM has work for them: a task cancelled while pending vanishes from
    accounting, and submitit would wait for its result forever. Once every job of the sweep
    has been seen and none is active (or none has been for a minute), the multiruns still
    waiting are stopped; the run directories hold the results."""
    seen: set[str] = set()
    idle_since: float | None = None
    while True:
        jobs = scheduler.jobs_named(sweep)
        seen |= set(jobs)
        waiting = any(p.poll() is None for p in procs)
        if any(s in scheduler.ACTIVE for s in jobs.values()):
            idle_since = None
        elif not waiting:
            break
        else:
            idle_since = idle_since or time.monotonic()
            idle = time.monotonic() - idle_since
            if (len(seen) >= n_jobs and idle >= 2 * poll) or idle >= max(60.0, 2 * poll):
                for p in procs:
                    if p.poll() is None:
                        os.killpg(p.pid, signal.SIGTERM)
                break
        time.sleep(poll)
    return [p.wait() for p in procs]


def reconcile(plan: Plan, sweep: str) -> dict[Job, str]:
    """After the scheduler is done with the sweep: a run still queued, running or interrupted
    was lost with its job (cancelled, timed out, out of memory, node failure). Record the
    scheduler's verdict in its status file, with the job id and log, so the table of failed
    runs, the analysis and the next `dvc repro` see it. A run whose job never started has no
    job id: its verdict is that of the sweep's jobs that no run claims. Returns the runs so marked."""
    sched = scheduler.jobs_named(sweep)
    statuses = {job: read_status(run_dir(cfg)) for job, cfg in plan.configs.items()}
    claimed = {st.get("slurm_job_id") for st in statuses.values()}
    # jobs no run claims: they never started a run. SLURM forgets an array task cancelled while
    # pending, so no record at all means cancelled; a record is the verdict (FAILED, ...)
    unclaimed = sorted({v for k, v in sched.items() if k not in claimed})
    lost = {}
    for job, st in statuses.items():
        if st.get("state") not in scheduler.IN_FLIGHT or st.get("sweep", sweep) != sweep:
            continue
        job_id = st.get("slurm_job_id")
        if job_id:
            # the sweep's jobs are all over: no record now means the job is gone too
            verdict = sched.get(job_id, "UNKNOWN")
            state = scheduler.overruled(st["state"], verdict)
            if state is None:
                continue  # requeued or running again: not lost
            error = f"SLURM job {job_id} ended {verdict if verdict != 'UNKNOWN' else 'unknown to the scheduler'} before the run did"
        else:
            state = "cancelled" if set(unclaimed) <= {"CANCELLED"} else "failed"
            verdict = ", ".join(unclaimed) or "cancelled while pending: no record left"
            error = f"its SLURM job ended before the run started ({verdict}); see the sweep's job logs"
        write_json(run_dir(plan.configs[job]) / "status.json", {**st, "state": state, "error": error})
        lost[job] = state
    return lost


def launch(plan: Plan, params: PipelineParams, log: Path, poll: float = 5.0) -> int:
    """Run the pending jobs as Hydra multiruns through the chosen launcher (this machine, or
    SLURM job arrays); returns the worst exit code."""
    todo = pending(plan)
    if not todo:
        print(f"all {len(plan.jobs)} runs are up to date")
        return 0
    print(f"{len(todo)} of {len(plan.jobs)} runs to train ({len(plan.jobs) - len(todo)} up to date)")
    stop = threading.Event()
    watcher = threading.Thread(target=watch, args=(plan, stop), daemon=True)
    cmds = multirun_commands(plan, todo, params)
    log.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(log, "a") as logf:
            if params.launcher != "slurm":
                watcher.start()
                return max(_run_groups([cmd], logf)[0] for cmd in cmds)  # one after another
            sweep = f"embreg-{plan.profile}-{secrets.token_hex(4)}"
            _mark_queued(plan, todo, sweep)
            watcher.start()
            # the arrays are submitted at once and wait side by side: SLURM schedules them
            worst = max(_run_groups([[*cmd, f"hydra.launcher.name={sweep}"] for cmd in cmds], logf, sweep,
                                    len(todo), poll))
            reconcile(plan, sweep)
            return worst
    finally:
        stop.set()
        if watcher.is_alive():
            watcher.join()
