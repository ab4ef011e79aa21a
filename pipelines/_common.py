"""Shared by the stage scripts: turn a user error into one line on stderr and exit 1; compose
configs from this checkout's conf/ (also in the jobs they start), whichever checkout the
installed package came from."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from embreg.data import DataUnavailableError
from embreg.registry import UnknownNameError

os.environ["EMBREG_CONF"] = str(Path(__file__).resolve().parents[1] / "conf")

# OSError: a read-only data dir, a results path that is a file, a full disk: one line each too
USER_ERRORS = (UnknownNameError, DataUnavailableError, ValueError, OSError)


def fail(main: Callable[[], int | None]) -> int:
    """Run a stage: a user error is one line per problem on stderr and exit status 1; Ctrl-C or
    TERM (``stop_on_signals``) is one line and exit status 130."""
    try:
        return main() or 0
    except USER_ERRORS as exc:
        for line in (str(exc) or type(exc).__name__).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        print(f"interrupted ({exc or 'Ctrl-C'}): every job this stage started has been stopped; "
              "`dvc repro` resumes where it stopped", file=sys.stderr)
        return 130


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def stop_on_signals() -> None:
    """TERM stops the stage like Ctrl-C, and so does the death of its parent: DVC killed by TERM
    does not pass it on, and the stage (re-parented) would go on training without it."""
    signal.signal(signal.SIGTERM, _stop)
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()
