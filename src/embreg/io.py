"""Atomic file writes and the git revision a run was trained at (torch-free: the sweep and
the analysis use it too)."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO


def _partial_prefix(path: Path) -> str:
    return f".{path.name}."  # hidden, and never a prefix of path's own name or of its .corrupt-* copies


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write`` on a temporary file beside ``path``, then rename it over ``path``: a crash
    mid-write keeps the old file, and a reader never sees half a file. A process killed mid-write
    (SIGKILL) leaves the temporary file: ``remove_partial_writes`` removes it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_partial_prefix(path), dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def remove_partial_writes(path: Path) -> list[Path]:
    """Remove the temporary files ``atomic_write`` left beside ``path`` when killed mid-write (a
    checkpoint's: up to its size each). Only where no other process may be writing ``path`` now
    (under the run's lock); returns the files removed."""
    found = sorted(Path(p) for p in glob.glob(glob.escape(str(path.parent / _partial_prefix(path))) + "*"))
    for p in found:
        p.unlink(missing_ok=True)
    return found


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically (a reader never sees half a file)."""
    data = (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()
    atomic_write(Path(path), lambda f: f.write(data))


def write_text(path: str | Path, text: str) -> None:
    atomic_write(Path(path), lambda f: f.write(text.encode()))


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def git_revision(cwd: str | Path | None = None) -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd, capture_output=True, text=True, check=True,
        ).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def available_cores() -> int:
    """The cores this process may run on: its CPU affinity (what SLURM, taskset or a container
    gave it) where the OS tells, else every core of the machine."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity else (os.cpu_count() or 1)
