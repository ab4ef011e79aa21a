"""A SLURM sweep submitted and left (``slurm.detach``, or the sweep stage's ``--detach``).

A detached sweep stage returns once SLURM has every job, with exit status ``DETACHED``; its jobs
go on without it. A later sweep stage (`dvc repro`) submits nothing that a live job still holds
(embreg.sweep.inflight): it waits for those jobs (attached) or returns again (detached). Once
none is left it *collects* the detached sweeps, as an attached sweep ends: the scheduler's
verdicts recorded, the runs without a result reported (exit status 1) and retrained by the next
sweep stage. Which detached sweeps are not collected yet is kept beside the sweep's log.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from embreg.io import write_json
from embreg.params import PipelineParams
from embreg.rundir import State
from embreg.sweep.plan import Job, Plan, observe_all

# sysexits' EX_TEMPFAIL: not finished yet, run it again later. Any non-zero status keeps DVC from
# recording the sweep stage as done and from running the analysis on half a sweep.
DETACHED = 75


def check_detach(params: PipelineParams, detach: bool, live: dict[Job, str]) -> None:
    """Raise a one-line ConfigError when the launcher cannot do it: detach from its own jobs
    (this machine's launcher runs them as its children), or wait for runs SLURM jobs hold."""
    from embreg.checks import ConfigError

    if detach and params.launcher != "slurm":
        raise ConfigError(f"--detach: launcher {params.launcher} runs the jobs as children of the sweep, "
                          "which cannot return before them; set launcher: slurm, or drop --detach")
    if live and params.launcher != "slurm":
        names = ", ".join(sorted(set(live.values())))
        raise ConfigError(f"launcher={params.launcher}: {len(live)} runs are still held by SLURM jobs ({names}); "
                          "set launcher: slurm to collect them, or cancel them first (scancel --name NAME)")


def summary(plan: Plan, live: dict[Job, str]) -> str:
    """One line: how many runs are done, running and queued (and ended without a result)."""
    states = {job: s.state for job, s in observe_all(plan).items()}
    queued = sum(states[job] == State.QUEUED for job in live)
    done = Counter(states.values())[State.DONE]
    ended = len(plan.jobs) - done - len(live)
    return (f"{done} done, {len(live) - queued} running, {queued} queued"
            + (f", {ended} ended without a result" if ended else "") + f" (of {len(plan.jobs)} runs)")


def marker_path(log: Path) -> Path:
    """Where the sweep stage of ``log`` lists its detached sweeps not yet collected."""
    return log.with_name(f"{log.stem}.detached.json")


def detached_sweeps(marker: Path) -> list[str]:
    """The detached sweeps not collected yet (none when the file is missing or unreadable: their
    runs are then judged like any other)."""
    try:
        names = json.loads(marker.read_text()).get("sweeps", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [str(n) for n in names] if isinstance(names, list) else []


def remember(marker: Path, sweep: str) -> None:
    write_json(marker, {"sweeps": [*dict.fromkeys([*detached_sweeps(marker), sweep])]})


def forget(marker: Path) -> None:
    marker.unlink(missing_ok=True)


def handed_over(sweep_dir: Path) -> bool:
    """Whether a SLURM multirun writing into ``sweep_dir`` has handed SLURM all its jobs.
    submitit pickles each job into <folder>/.submitit/<uuid>.pkl, calls sbatch once, then moves
    each pickle to <job id>/<job id>_submitted.pkl, where the job waits for it (60 s at most):
    so its work is done once a moved pickle exists and no unmoved one is left."""
    root = sweep_dir / ".submitit"
    return any(root.glob("*/*_submitted.pkl")) and not any(root.glob("*.pkl"))
