"""One attempt at a run, made safe: a lock, a staging directory, and a swap at the end.

A run directory (``runs/<run id>/seed<k>/``) that holds a *result* (status ``done`` and a
``metrics.json`` that parses as strict JSON) is never touched by a later attempt until that
attempt has finished: the attempt writes into ``runs/<run id>/.seed<k>.next/`` and, once done,
swaps it in (two renames; ``recover`` completes a swap cut between them). A directory without a
result has nothing to lose, so an attempt works in it directly, as the sweep and `embreg status`
expect (queued, running, failed, ...).

Only one process works on a run at a time: ``RunLock`` holds ``fcntl.flock`` on ``run.lock``
beside the run's checkpoint. The kernel drops the lock when the process dies, however it dies,
so a status file that still says ``running`` while nobody holds the lock was left by a process
that is gone (``alive``). Torch-free: the sweep and `embreg status` use it too.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

STATUS, METRICS, LOCK = "status.json", "metrics.json", "run.lock"
UNREADABLE = "unreadable"  # a status file that cannot be parsed: the run is retrained
LIVE_STATES = ("running",)  # a status only a living process may hold


class RunLockedError(RuntimeError):
    """Another process holds this run's lock."""


def attempt_dir(rd: Path) -> Path:
    """Where a new attempt works while ``rd`` holds a result: a hidden sibling (the analysis
    and the run-directory globs only see ``seed<k>``)."""
    return rd.parent / f".{rd.name}.next"


def _old_dir(rd: Path) -> Path:
    return rd.parent / f".{rd.name}.old"


def strict_json(path: Path) -> Any:
    """JSON from ``path``; NaN and infinities are refused (they are not JSON)."""
    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def read_status_file(path: Path) -> dict[str, Any]:
    """A status file's contents; ``missing`` without one, ``unreadable`` (with the file and why
    in ``error``) when it cannot be parsed."""
    if not path.is_file():
        return {"state": "missing"}
    try:
        status = strict_json(path)
        if not isinstance(status, dict) or not isinstance(status.get("state"), str):
            raise ValueError("not a status object")
    except (OSError, ValueError) as exc:
        return {"state": UNREADABLE, "error": f"unreadable status file {path}: {exc}", "file": str(path)}
    return status


def has_result(rd: Path) -> bool:
    """Whether ``rd`` holds a finished result: status done and a valid metrics.json."""
    if read_status_file(rd / STATUS).get("state") != "done":
        return False
    try:
        return isinstance(strict_json(rd / METRICS), dict)
    except (OSError, ValueError):
        return False


def recover(rd: Path) -> None:
    """Finish or undo a swap that was cut between its two renames (see ``publish``)."""
    old, nxt = _old_dir(rd), attempt_dir(rd)
    if not old.is_dir():
        return
    if not rd.exists():
        if has_result(nxt):
            nxt.rename(rd)  # the new result was complete: finish the swap
        else:
            old.rename(rd)  # put the old one back
            return
    shutil.rmtree(old, ignore_errors=True)


def work_dir(rd: Path) -> Path:
    """Where the next attempt writes: ``rd`` itself unless it holds a result to protect."""
    recover(rd)
    if has_result(rd):
        return attempt_dir(rd)
    if attempt_dir(rd).exists():  # an older attempt beside a directory that has no result now
        shutil.rmtree(attempt_dir(rd))
    return rd


def publish(wd: Path, rd: Path) -> None:
    """Make the finished attempt in ``wd`` the run directory ``rd`` (a no-op when they are one)."""
    if wd == rd:
        return
    old = _old_dir(rd)
    shutil.rmtree(old, ignore_errors=True)
    if rd.exists():
        rd.rename(old)
    wd.rename(rd)
    shutil.rmtree(old, ignore_errors=True)


def latest_status(rd: Path) -> tuple[dict[str, Any], Path]:
    """The status of the run's latest attempt and the file it is in: an attempt beside a
    result (running, failed, ...) is newer than the result; otherwise the run directory's."""
    nxt = attempt_dir(rd) / STATUS
    if nxt.is_file() and has_result(rd):
        return read_status_file(nxt), nxt
    return read_status_file(rd / STATUS), rd / STATUS


def finished(rd: Path, fingerprint: str) -> bool:
    """The one rule: status done, this fingerprint, and a valid metrics.json."""
    return has_result(rd) and read_status_file(rd / STATUS).get("fingerprint") == fingerprint


def held(lock: Path) -> bool:
    """Whether a process holds ``lock`` now (probed with a shared lock, released at once)."""
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def alive(status: dict[str, Any], lock: Path) -> dict[str, Any]:
    """``status`` as it stands: one that says running on this host while nobody holds the run's
    lock was left by a process that died (killed, machine lost) and becomes ``interrupted``.
    A run on another host is left to its scheduler (SLURM's verdict) to judge."""
    if status.get("state") not in LIVE_STATES or status.get("host", socket.gethostname()) != socket.gethostname():
        return status
    if held(lock):
        return status
    who = f"pid {status['pid']}" if "pid" in status else "its process"
    return {**status, "state": "interrupted", "error": f"{who} on {status.get('host', 'this host')} is gone "
                                                      "(it stopped without recording why); rerun to resume"}


class RunLock:
    """``fcntl.flock`` on ``path`` for the life of the attempt. A probe by ``held`` takes the
    lock for an instant, so acquiring retries for ``wait`` seconds before giving up."""

    def __init__(self, path: Path, what: str, wait: float = 2.0) -> None:
        self.path, self.what, self.wait = path, what, wait
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                    os.close(fd)
                    raise RunLockedError(f"{self.what} is already being trained by {holder} "
                                         f"(lock {self.path}); wait for it or stop it first") from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock
            self.fd = None


def finite(obj: Any, path: str = "") -> tuple[Any, dict[str, str]]:
    """``obj`` with every NaN / infinity replaced by None, and {dotted key: why} for each."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None, {path or "value": f"not a finite number ({obj})"}
    if isinstance(obj, dict):
        out, why = {}, {}
        for k, v in obj.items():
            out[k], sub = finite(v, f"{path}.{k}" if path else str(k))
            why.update(sub)
        return out, why
    if isinstance(obj, list | tuple):
        items = [finite(v, f"{path}[{i}]") for i, v in enumerate(obj)]
        return [v for v, _ in items], {k: w for _, sub in items for k, w in sub.items()}
    return obj, {}
