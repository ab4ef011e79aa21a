"""Shared by the stage scripts: turn a user error into one line on stderr and exit 1; compose
configs from this checkout's conf/ (also in the jobs they start), whichever checkout the
installed package came from."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from embreg.data import DataUnavailableError
from embreg.registry import UnknownNameError

os.environ["EMBREG_CONF"] = str(Path(__file__).resolve().parents[1] / "conf")

USER_ERRORS = (UnknownNameError, DataUnavailableError, ValueError, FileNotFoundError)


def fail(main: Callable[[], int | None]) -> int:
    try:
        return main() or 0
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
