"""Launching a sweep and waiting for it: the plan's pending runs become Hydra multiruns of
``embreg.train`` through the chosen launcher (this machine, or SLURM job arrays); a progress bar
follows the run directories; after a SLURM sweep, runs lost with their jobs get the
scheduler's verdict.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from embreg.attempt import attempt_dir, has_result
from embreg.params import PipelineParams
from embreg.rundir import FINISHED, IN_FLIGHT, State, run_dir, run_id, write_status
from embreg.sweep import scheduler
from embreg.sweep.commands import multirun_commands, multirun_lanes
from embreg.sweep.plan import Job, Plan, observe_all, pending, states, unreadable, validate_plan
from embreg.sweep.stopping import stop_groups


def watch(plan: Plan, stop: threading.Event, interval: float | None = None) -> None:
    """A progress bar over the plan's runs, from their status files, until ``stop``: how many
    are pending (queued on SLURM), running, done, failed. On a terminal it refreshes every 5 s;
    in a log, once a minute."""
    interval = interval or (5.0 if sys.stderr.isatty() else 60.0)
    with tqdm(total=len(plan.jobs), desc=f"sweep {plan.profile}", unit="run", mininterval=0) as bar:
        while True:
            counts = Counter(states(plan).values())
            counts["pending"] = counts.pop(State.QUEUED, 0)
            bar.n = sum(counts[k] for k in FINISHED)
            bar.set_postfix({str(k): v for k, v in counts.items() if v and k not in (State.MISSING, State.STALE)},
                            refresh=False)
            bar.refresh()
            if stop.wait(interval):
                break


def _start(cmd: list[str], logf) -> subprocess.Popen:
    """A multirun in its own process group (``stop_groups`` stops it and every job it started)."""
    logf.write(f"\n$ {' '.join(cmd)}\n")
    logf.flush()
    return subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)


def _run_lanes(lanes: list[list[list[str]]], logf, poll: float = 0.5) -> int:
    """Each lane's multiruns one after another, the lanes side by side (on a cuda profile, one
    per GPU); returns the worst exit code. Stopping the sweep stops every multirun running."""
    todo = [list(lane) for lane in lanes]
    running: dict[int, subprocess.Popen] = {}
    codes = [0]
    try:
        while True:
            for n, queue in enumerate(todo):
                if n in running and running[n].poll() is not None:
                    codes.append(running.pop(n).returncode)
                if n not in running and queue:
                    running[n] = _start(queue.pop(0), logf)
            if not running:
                return max(codes)
            time.sleep(poll)
    except BaseException:
        stop_groups(list(running.values()))  # TERM, then KILL after a grace: no job outlives the sweep
        raise


def _run_groups(cmds: list[list[str]], logf, sweep: str | None = None, n_jobs: int = 0,
                poll: float = 5.0) -> list[int]:
    """Run multiruns side by side, each in its own process group (so that stopping the sweep,
    by Ctrl-C or a TERM from DVC, also stops the jobs they started), and wait for all; for a
    SLURM ``sweep``, until the scheduler has none of its jobs active. Stopping the sweep stops
    them and cancels the SLURM jobs of ``sweep``."""
    procs = []
    try:
        for cmd in cmds:
            procs.append(_start(cmd, logf))
        if sweep:
            return _await_multiruns(procs, sweep, n_jobs, poll)
        return [p.wait() for p in procs]
    except BaseException:
        stop_groups(procs)  # TERM, then KILL after a grace: no job outlives the sweep
        if sweep:
            scheduler.cancel(list(scheduler.jobs_named(sweep)))
        raise


def _mark_queued(plan: Plan, jobs: list[Job], sweep: str) -> None:
    """A 'queued' status for each job about to be submitted: until a job starts, this is how
    the progress bar and `embreg status` know it is pending, and how a job cancelled before
    it started is told from one never submitted."""
    for job in jobs:
        cfg = plan.configs[job]
        rd = run_dir(cfg)  # beside a kept result (stale), never over it: see embreg.attempt
        write_status(attempt_dir(rd) if has_result(rd) else rd, {"run_id": run_id(cfg), "arm": cfg.arm, "seed": cfg.seed,
                                    "state": State.QUEUED, "sweep": sweep})


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


def reconcile(plan: Plan, sweep: str) -> dict[Job, State]:
    """After the scheduler is done with the sweep: a run still queued, running or interrupted
    was lost with its job (cancelled, timed out, out of memory, node failure). Record the
    scheduler's verdict in its status file, with the job id and log, so the table of failed
    runs, the analysis and the next `dvc repro` see it. A run whose job never started has no
    job id: its verdict is that of the sweep's jobs that no run claims. Returns the runs so marked."""
    sched = scheduler.jobs_named(sweep)
    seen = observe_all(plan)  # the latest attempt's status, and the file it is in
    statuses = {job: s.status for job, s in seen.items()}
    claimed = {st.get("slurm_job_id") for st in statuses.values()}
    # jobs no run claims: they never started a run. SLURM forgets an array task cancelled while
    # pending, so no record at all means cancelled; a record is the verdict (FAILED, ...)
    unclaimed = sorted({v for k, v in sched.items() if k not in claimed})
    lost = {}
    for job, st in statuses.items():
        if st.get("state") not in IN_FLIGHT or st.get("sweep", sweep) != sweep:
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
            state = State.CANCELLED if set(unclaimed) <= {"CANCELLED"} else State.FAILED
            verdict = ", ".join(unclaimed) or "cancelled while pending: no record left"
            error = f"its SLURM job ended before the run started ({verdict}); see the sweep's job logs"
        where = seen[job].path
        write_status(where.parent if where else run_dir(plan.configs[job]), {**st, "state": state, "error": error})
        lost[job] = state
    return lost


def launch(plan: Plan, params: PipelineParams, log: Path, poll: float = 5.0) -> int:
    """Run the pending jobs as Hydra multiruns through the chosen launcher (this machine, or
    SLURM job arrays); returns the worst exit code."""
    validate_plan(plan, params)  # every run and the launcher, before any is launched
    for line in unreadable(plan):
        print(line, file=sys.stderr)
    todo = pending(plan)
    if not todo:
        print(f"all {len(plan.jobs)} runs are up to date")
        return 0
    print(f"{len(todo)} of {len(plan.jobs)} runs to train ({len(plan.jobs) - len(todo)} up to date)")
    stop = threading.Event()
    watcher = threading.Thread(target=watch, args=(plan, stop), daemon=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(log, "a") as logf:
            if params.launcher != "slurm":
                lanes = multirun_lanes(plan, todo, params)
                watcher.start()
                return _run_lanes(lanes, logf)  # a lane's multiruns one after another
            cmds = multirun_commands(plan, todo, params)
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
