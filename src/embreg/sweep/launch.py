"""Launching a sweep and waiting for it: the plan's pending runs become Hydra multiruns of
``embreg.train`` through the chosen launcher (this machine, or SLURM job arrays); a progress bar
follows the run directories; after a SLURM sweep, runs lost with their jobs get the
scheduler's verdict. A SLURM sweep may also be submitted and left (``detach``): see
embreg.sweep.detach.
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
from embreg.rundir import FINISHED, State, run_dir, run_id, write_status
from embreg.sweep import scheduler
from embreg.sweep.commands import multirun_commands, multirun_lanes
from embreg.sweep.detach import check_detach, detached_sweeps, forget, handed_over, marker_path, remember
from embreg.sweep.inflight import ended_in, in_flight, reconcile
from embreg.sweep.plan import Job, Plan, pending, states, unreadable, validate_plan
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


def _run_groups(cmds: list[list[str]], logf, sweeps: list[str], n_jobs: int = 0, poll: float = 5.0,
                handover: list[Path] | None = None) -> list[int]:
    """Run SLURM multiruns side by side, each in its own process group (so that stopping the
    sweep, by Ctrl-C or a TERM from DVC, also stops the jobs they started), and wait until the
    scheduler has none of the ``sweeps``' jobs active (an earlier detached sweep's among them).
    Stopping the sweep stops them and cancels the SLURM jobs of ``sweeps``.

    Detached (``handover``: each multirun's hydra.sweep.dir): only until SLURM has every job;
    the multiruns, which would only wait for results, are then stopped, and signals ignored
    (the jobs are SLURM's now: nothing may report them stopped). A multirun that ends first
    (sbatch refused) undoes the whole submission: every job of ``sweeps`` is cancelled."""
    procs = []
    try:
        for cmd in cmds:
            procs.append(_start(cmd, logf))
        if handover is None:
            return _await_multiruns(procs, sweeps, n_jobs, poll)
        codes = _await_handover(procs, handover)
        if not any(codes):
            _ignore_signals()
            stop_groups(procs)
            return codes
    except BaseException:
        _abandon(procs, sweeps)  # TERM, then KILL after a grace: no job outlives the sweep
        raise
    _abandon(procs, sweeps)
    return codes


def _abandon(procs: list[subprocess.Popen], sweeps: list[str]) -> None:
    stop_groups(procs)
    for sweep in sweeps:
        scheduler.cancel(list(scheduler.jobs_named(sweep)))


def _ignore_signals() -> None:
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)


def _await_handover(procs: list[subprocess.Popen], sweep_dirs: list[Path], poll: float = 0.5) -> list[int]:
    """Until each multirun has handed SLURM all its jobs (embreg.sweep.detach.handed_over) or
    one has failed: their exit codes, 0 for those still running."""
    while True:
        codes = [p.poll() for p in procs]
        if any(codes) or all(c == 0 or handed_over(d) for c, d in zip(codes, sweep_dirs, strict=True)):
            return [c or 0 for c in codes]
        time.sleep(poll)


def _mark(plan: Plan, jobs: list[Job], sweep: str, state: State = State.QUEUED, error: str | None = None) -> None:
    """A 'queued' status for each job about to be submitted: until a job starts, this is how
    the progress bar and `embreg status` know it is pending, and how a job cancelled before
    it started is told from one never submitted. (``state`` failed: its submission failed.)"""
    for job in jobs:
        cfg = plan.configs[job]
        rd = run_dir(cfg)  # beside a kept result (stale), never over it: see embreg.attempt
        write_status(attempt_dir(rd) if has_result(rd) else rd, {
            "run_id": run_id(cfg), "arm": cfg.arm, "seed": cfg.seed, "state": state, "sweep": sweep,
            **({"error": error} if error else {})})


def _await_multiruns(procs: list[subprocess.Popen], sweeps: list[str], n_jobs: int, poll: float) -> list[int]:
    """Wait for the multiruns and for SLURM to have none of the sweeps' jobs active (a
    multirun whose job was cancelled ends early, while the rest of its array still runs), but
    no longer than SLURM has work for them: a task cancelled while pending vanishes from
    accounting, and submitit would wait for its result forever. Once every job of the sweeps
    has been seen and none is active (or none has been for a minute), the multiruns still
    waiting are stopped; the run directories hold the results."""
    seen: set[str] = set()
    idle_since: float | None = None
    while True:
        jobs = {job: state for sweep in sweeps for job, state in scheduler.jobs_named(sweep).items()}
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


def launch(plan: Plan, params: PipelineParams, log: Path, poll: float = 5.0, detach: bool = False) -> int:
    """Run the pending jobs as Hydra multiruns through the chosen launcher (this machine, or
    SLURM job arrays) and wait for them, and for the runs that jobs of an earlier detached sweep
    still hold (never submitted twice); returns the worst exit code. ``detach`` (SLURM only):
    return as soon as SLURM has every job (embreg.sweep.detach)."""
    validate_plan(plan, params)  # every run and the launcher, before any is launched
    for line in unreadable(plan):
        print(line, file=sys.stderr)
    marker = marker_path(log)
    earlier, live = detached_sweeps(marker), in_flight(plan)
    check_detach(params, detach, live)
    held = ended_in(plan, earlier, live)  # reported when the sweep is collected, not resubmitted
    todo = [job for job in pending(plan) if job not in live and job not in held]
    _announce(plan, todo, live, held)
    if not todo and (detach or not live):
        if not live:  # every job of the detached sweeps has ended: collect them
            for sweep in earlier:
                reconcile(plan, sweep)
            forget(marker)
        return 0
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as logf:
        if detach:
            return _submit_detached(plan, todo, params, logf, marker)
        try:
            return _attached(plan, todo, params, logf, live, poll, earlier)
        finally:  # ended, or stopped with every job it waited on: nothing detached is left
            forget(marker)


def _announce(plan: Plan, todo: list[Job], live: dict[Job, str], held: set[Job]) -> None:
    n = len(plan.jobs)
    if live:
        print(f"{len(live)} of {n} runs are held by the SLURM jobs of an earlier sweep "
              f"({', '.join(sorted(set(live.values())))}): not submitted again")
    if held:
        print(f"{len(held)} of {n} runs ended without a result in a detached sweep: reported once every "
              "job of it has ended, retrained by the next run after that")
    if todo:
        print(f"{len(todo)} of {n} runs to train ({n - len(todo) - len(live) - len(held)} up to date)")
    elif not live and not held:
        print(f"all {n} runs are up to date")


def _sweep_name(plan: Plan) -> str:
    return f"embreg-{plan.profile}-{secrets.token_hex(4)}"  # the SLURM job name of its arrays


def _submit_detached(plan: Plan, todo: list[Job], params: PipelineParams, logf, marker: Path) -> int:
    """Submit ``todo`` and return once SLURM has every job; the jobs then run on without this
    process, and the sweep is remembered (``marker``) until a later sweep stage collects it. A
    failed submission is undone: its jobs cancelled, its runs failed, naming the log."""
    sweep = _sweep_name(plan)
    cmds = multirun_commands(plan, todo, params)
    # one hydra.sweep.dir per multirun: where to see that it has handed SLURM its jobs
    dirs = [Path("outputs") / "hydra" / plan.profile / sweep / str(k) for k in range(len(cmds))]
    _mark(plan, todo, sweep)
    named = [[*cmd, f"hydra.launcher.name={sweep}", f"hydra.sweep.dir={d}"] for cmd, d in zip(cmds, dirs, strict=True)]
    codes = _run_groups(named, logf, [sweep], handover=dirs)
    failed = next((code for code in codes if code), 0)
    if failed:
        _mark(plan, todo, sweep, State.FAILED, f"submission to SLURM failed (exit status {failed}); see {logf.name}")
        return failed
    remember(marker, sweep)
    print(f"submitted {len(todo)} runs to SLURM as {sweep}")
    return 0


def _attached(plan: Plan, todo: list[Job], params: PipelineParams, logf, live: dict[Job, str],
              poll: float, earlier: list[str]) -> int:
    """Train ``todo`` and wait for it, and for the jobs that hold the ``live`` runs (SLURM), under
    a progress bar; then record the scheduler's verdicts of every sweep that has ended."""
    stop = threading.Event()
    watcher = threading.Thread(target=watch, args=(plan, stop), daemon=True)
    sweeps = sorted(set(live.values()))
    try:
        if params.launcher != "slurm":  # nothing live: embreg.sweep.detach.check_detach
            watcher.start()
            worst = _run_lanes(multirun_lanes(plan, todo, params), logf)  # a lane's multiruns one after another
        else:
            sweep = _sweep_name(plan)
            cmds = multirun_commands(plan, todo, params) if todo else []
            _mark(plan, todo, sweep)
            sweeps = [sweep, *sweeps] if todo else sweeps
            watcher.start()
            # the arrays are submitted at once and wait side by side: SLURM schedules them
            worst = max(_run_groups([[*cmd, f"hydra.launcher.name={sweep}"] for cmd in cmds], logf, sweeps,
                                    len(todo) + len(live), poll), default=0)
    finally:
        stop.set()
        if watcher.is_alive():
            watcher.join()
    for name in dict.fromkeys([*sweeps, *earlier]):
        reconcile(plan, name)
    return worst
