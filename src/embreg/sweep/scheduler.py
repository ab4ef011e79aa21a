"""What SLURM says about jobs: squeue for the jobs the controller still holds, sacct
(accounting) for older ones.

Job ids are strings as SLURM prints them; an array task is ``<array job id>_<task index>``.
Every function returns an empty answer, never raises, when no SLURM answers on this machine.
"""

from __future__ import annotations

import re
import shutil
import subprocess

from embreg.rundir import IN_FLIGHT, State

# states of a job that may still run (a preempted job is requeued and comes back)
ACTIVE = frozenset({"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD",
                    "REQUEUE_FED", "RESIZING", "SUSPENDED", "STOPPED", "PREEMPTED", "SIGNALING",
                    "STAGE_OUT", "RESV_DEL_HOLD"})
# terminal states in which the job did not finish its work
LOST = frozenset({"CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                  "DEADLINE", "REVOKED"})


def overruled(file_state: str, verdict: str | None) -> State | None:
    """The state a run's status file should say once its job's scheduler state ``verdict``
    contradicts it, or None when the file stands. A run in flight whose job is no longer active
    was lost with it: SLURM's own verdict (cancelled, timeout, out_of_memory, ...) when it is
    one of those, else failed (the job ended without the run writing its end). ``verdict``
    None: the scheduler has no record, so no evidence either way."""
    if file_state not in IN_FLIGHT or verdict is None or verdict in ACTIVE:
        return None
    return State(verdict.lower()) if verdict in LOST else State.FAILED


_TASK_RANGE = re.compile(r"^(\d+)_\[([^\]]+)\]$")  # 12_[1,3-5%2]: an array's tasks not started yet


def available() -> bool:
    """Whether a SLURM controller answers here."""
    if shutil.which("squeue") is None:
        return False
    return _run(["squeue", "-h", "-o", "%i"]) is not None


def _run(cmd: list[str], empty_on: str | None = None) -> str | None:
    """The command's stdout; None if it failed, "" if it failed with ``empty_on`` in its stderr."""
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if res.returncode == 0:
        return res.stdout
    return "" if empty_on and empty_on in res.stderr else None


def _state(raw: str) -> str:
    return raw.split()[0].upper() if raw.strip() else "UNKNOWN"  # "CANCELLED by 0" -> CANCELLED


def _expand(job: str) -> list[str]:
    """``12_[1,3-4%2]`` -> 12_1, 12_3, 12_4 (sacct lists an array's pending tasks as one line);
    any other id as it is."""
    m = _TASK_RANGE.match(job)
    if not m:
        return [job]
    tasks: list[str] = []
    for part in m.group(2).split("%")[0].split(","):
        lo, _, hi = part.partition("-")
        tasks += [f"{m.group(1)}_{i}" for i in range(int(lo), int(hi or lo) + 1)]
    return tasks


def _parse(out: str | None) -> dict[str, str]:
    """``id|state`` lines -> {id: STATE}; job steps (123.batch) skipped, array ranges expanded.
    A task's own line wins over a range that still lists it (accounting updates ranges late)."""
    single: dict[str, str] = {}
    ranged: dict[str, str] = {}
    for line in (out or "").splitlines():
        job, _, state = line.strip().partition("|")
        if job and "." not in job:
            for task in _expand(job):
                (ranged if task != job else single)[task] = _state(state)
    return {**ranged, **single}


def _queue(args: list[str]) -> dict[str, str] | None:
    """Every job the controller holds, finished ones too (-t all); None if squeue does not answer.
    -r: one line per array task, so pending tasks are listed as 12_3, not 12_[3-5]."""
    if shutil.which("squeue") is None:
        return None
    out = _run(["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T", *args], empty_on="Invalid job id")
    return None if out is None else _parse(out)


def _accounting(args: list[str]) -> dict[str, str]:
    if shutil.which("sacct") is None:
        return {}
    return _parse(_run(["sacct", "-n", "-X", "-P", "-o", "JobID,State", *args]))


def _merge(acct: dict[str, str], live: dict[str, str] | None) -> dict[str, str]:
    """squeue's states over sacct's. When squeue answered, a job it does not list has ended,
    whatever sacct still says: an active state there is stale (e.g. a pending array task
    cancelled on its own stays in its array's PENDING range), so it is dropped."""
    if live is None:
        return acct
    return {**{k: v for k, v in acct.items() if v not in ACTIVE}, **live}


def job_states(job_ids: list[str]) -> dict[str, str]:
    """State of each job id (``123`` or ``123_4``); ids SLURM does not know are left out.

    Both tools are asked about the whole array (``-j 123``): sacct lists an array's pending
    tasks only there, as a range, never under their own ids."""
    wanted = set(job_ids)
    if not wanted:
        return {}
    arrays = ",".join(sorted({j.split("_")[0] for j in wanted}))
    states = _merge(_accounting(["-j", arrays]), _queue(["-j", arrays]))
    return {k: v for k, v in states.items() if k in wanted}


def jobs_named(name: str) -> dict[str, str]:
    """Every job (array tasks one by one) with this job name, and its state."""
    return _merge(_accounting(["--name", name, "-S", "now-7days"]), _queue(["-n", name]))


def cancel(job_ids: list[str]) -> None:
    if job_ids and shutil.which("scancel"):
        _run(["scancel", *job_ids])
