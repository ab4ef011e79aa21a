"""Atomic file writes and provenance (git revision, code fingerprint)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import torch

PACKAGE_DIR = Path(__file__).resolve().parent


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
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


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically (a reader never sees half a file)."""
    data = (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()
    _atomic(Path(path), lambda f: f.write(data))


def write_text(path: str | Path, text: str) -> None:
    _atomic(Path(path), lambda f: f.write(text.encode()))


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """torch.save to a temporary file, then rename: a crash mid-write keeps the old one."""
    _atomic(Path(path), lambda f: torch.save(state, f))


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


# modules that never change what a run computes: analysis, launching, reporting, the CLI
NOT_TRAINING_CODE = ("analysis", "bench", "bench.py", "cli.py", "launch.py", "params.py", "scheduler.py", "status.py")


def code_hash() -> str:
    """Hash of the library's training and evaluation code: a run trained by other code is
    not reused. Analysis, launching and reporting code is left out (re-analysing or moving to
    another launcher needs no retraining)."""
    h = hashlib.sha256()
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        rel = path.relative_to(PACKAGE_DIR)
        if rel.parts[0] in NOT_TRAINING_CODE:
            continue
        h.update(str(rel).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]
