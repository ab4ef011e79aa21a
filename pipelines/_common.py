"""Shared by the stage scripts: turn a user error into one line on stderr and exit 1."""

from __future__ import annotations

import sys
from collections.abc import Callable

from embreg.data import DataUnavailableError
from embreg.registry import UnknownNameError

USER_ERRORS = (UnknownNameError, DataUnavailableError, ValueError, FileNotFoundError)


def fail(main: Callable[[], int | None]) -> int:
    try:
        return main() or 0
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
