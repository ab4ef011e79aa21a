"""The `slurm` tests run against the project's single-node cluster (tests/slurm/cluster.sh,
`make slurm-up`), never a mock."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable

import pytest


def require_cluster() -> None:
    if shutil.which("sinfo") is None or subprocess.run(["sinfo", "-h"], capture_output=True).returncode:
        pytest.fail("no SLURM cluster answers: start it with `make slurm-up` (root), or deselect with -m 'not slurm'")


def wait_for(cond: Callable[[], object], timeout: float, what: str, poll: float = 0.2) -> None:
    """Poll ``cond`` until it is true; fail naming ``what`` after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)
