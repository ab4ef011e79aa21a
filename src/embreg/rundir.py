"""A run directory, owned in one place: its id, its paths, the run-state vocabulary, reading
and writing its status.json, and the one rule for "finished with this fingerprint".

A run is an arm x a seed: ``results/<profile>/runs/<run id>/seed<k>/``. The run id is the
arm's name plus ``@key=value`` for each swept key, e.g. ``svmax@svmax=0.3``. Torch-free: the
training run (``embreg.run``), the sweep (``embreg.sweep``) and the analysis read it alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from embreg.attempt import LOCK, alive, finished, latest_status, read_status_file
from embreg.config import RunConfig
from embreg.fingerprint import fingerprint_of, fingerprint_parts, run_fingerprint, stale_reasons
from embreg.io import write_json

STATUS_FILE = "status.json"


class State(str, Enum):
    """Every state a run can be in. The first group is written by the run itself, ``queued``
    by the sweep before it submits a job; ``missing`` and ``stale`` are never written (no
    status file; finished under another fingerprint); the last group is a scheduler's verdict
    on a job that ended before its run did (SLURM's state, lower-cased)."""

    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    DIVERGED = "diverged"
    INTERRUPTED = "interrupted"  # stopped by a signal (preempted, timed out, cancelled): resumes
    QUEUED = "queued"
    MISSING = "missing"
    STALE = "stale"
    INCOMPLETE = "incomplete"  # done with this fingerprint, but no valid metrics.json: retrained
    UNREADABLE = "unreadable"  # a status file that does not parse: retrained
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"
    NODE_FAIL = "node_fail"
    OUT_OF_MEMORY = "out_of_memory"
    BOOT_FAIL = "boot_fail"
    DEADLINE = "deadline"
    REVOKED = "revoked"

    # a State is its string everywhere: equal to it, hashed like it, printed as it
    __hash__ = str.__hash__

    def __str__(self) -> str:
        return self.value

    __format__ = str.__format__


# a status file in one of these can only be moved on by its (still running) job
IN_FLIGHT = frozenset({State.QUEUED, State.RUNNING, State.INTERRUPTED})
# nothing will change these without a new launch
FINISHED = frozenset({State.DONE, State.FAILED, State.DIVERGED, State.CANCELLED, State.TIMEOUT,
                      State.NODE_FAIL, State.OUT_OF_MEMORY, State.BOOT_FAIL, State.DEADLINE, State.REVOKED})


def run_id(cfg: RunConfig) -> str:
    """The arm's name, plus ``@key=value`` for each swept key (coefficient sweeps)."""
    from omegaconf import OmegaConf

    tags = ""
    if cfg.tag_keys:
        node = OmegaConf.structured(cfg)
        tags = "".join(f"@{k.split('.')[-1]}={OmegaConf.select(node, k)}" for k in cfg.tag_keys)
    return cfg.arm + tags


def run_dir(cfg: RunConfig) -> Path:
    return Path(cfg.paths.results) / "runs" / run_id(cfg) / f"seed{cfg.seed}"


def checkpoint_path(cfg: RunConfig) -> Path:
    return Path(cfg.paths.checkpoints) / run_id(cfg) / f"seed{cfg.seed}" / "last.pt"


def lock_path(cfg: RunConfig) -> Path:
    """The run's lock file (embreg.attempt.RunLock), beside its checkpoint: stable across swaps."""
    return checkpoint_path(cfg).with_name(LOCK)


def read_status(rd: Path) -> dict[str, Any]:
    """The run's status.json; ``{"state": "missing"}`` without one, ``unreadable`` (the file and
    why in ``error``) when it does not parse."""
    return read_status_file(rd / STATUS_FILE)


def write_status(rd: Path, status: dict[str, Any]) -> None:
    """Write the run's status.json atomically; ``status["state"]`` must be a State."""
    state = State(status["state"])  # raises on a state outside the vocabulary
    write_json(rd / STATUS_FILE, {**status, "state": state.value})


def judge(status: dict[str, Any], fingerprint: str) -> State:
    """A status file's state: a result finished under another fingerprint (other config or
    training code) is stale. ``observe`` adds the rest of the rule (a valid metrics.json)."""
    state = State(status.get("state", State.MISSING))
    if state == State.DONE and status.get("fingerprint") != fingerprint:
        return State.STALE
    return state


@dataclass
class Observed:
    """A run as its directory shows it: the judged state, the status behind it and its file;
    for a stale run, why (embreg.fingerprint.stale_reasons: config, which code parts)."""

    state: State
    status: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    why: list[str] = field(default_factory=list)


def observe(cfg: RunConfig) -> Observed:
    """The one "finished" rule: done only with status done, this checkout's fingerprint and a
    valid metrics.json (embreg.attempt.finished). Otherwise the latest attempt's status (beside a
    kept result, or in the run directory): a result of other config or code is stale, one
    without valid metrics incomplete, 'running' whose process is gone interrupted, a status
    file that does not parse unreadable. All but done need a run."""
    parts = fingerprint_parts(cfg)
    rd, fp = run_dir(cfg), fingerprint_of(parts)
    if finished(rd, fp):
        return Observed(State.DONE, read_status(rd), rd / STATUS_FILE)
    status, path = latest_status(rd)
    status = alive(status, lock_path(cfg))
    state = judge(status, fp)
    if state == State.DONE:
        state = State.INCOMPLETE
        status = {**status, "error": f"status done but {rd / 'metrics.json'} is missing or not valid JSON"}
    why = stale_reasons(status.get("fingerprint_parts"), parts) if state == State.STALE else []
    return Observed(state, status, path, why)


def is_finished(cfg: RunConfig, fingerprint: str | None = None) -> bool:
    """Whether the run directory holds a finished result with ``fingerprint`` (default: this
    checkout's for ``cfg``)."""
    return finished(run_dir(cfg), fingerprint or run_fingerprint(cfg))
