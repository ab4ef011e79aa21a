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
from embreg.params import PipelineParams, group_options, load_params
from embreg.registry import UnknownNameError, check_choice

os.environ["EMBREG_CONF"] = str(Path(__file__).resolve().parents[1] / "conf")

# OSError: a read-only data dir, a results path that is a file, a full disk: one line each too
USER_ERRORS = (UnknownNameError, DataUnavailableError, ValueError, OSError)


def fail(main: Callable[[], int | None]) -> int:
    """Run a stage: a user error is one line per problem on stderr and exit status 1; Ctrl-C or
    TERM (``stop_on_signals``) is one line and exit status 130."""
    # what a person ran, recorded by every run this stage starts (embreg.provenance)
    os.environ.setdefault("EMBREG_COMMAND", f"dvc repro {os.environ['DVC_STAGE']}" if os.environ.get("DVC_STAGE")
                          else " ".join(["python", *sys.argv]))
    try:
        return main() or 0
    except USER_ERRORS as exc:
        for line in (str(exc) or type(exc).__name__).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        print(f"interrupted ({exc or 'Ctrl-C'}): every job this stage started or waited on has been stopped; "
              "`dvc repro` resumes where it stopped", file=sys.stderr)
        return 130


def stage_params(argv: list[str] | None = None, usage: str = "[--pipeline NAME | --profile NAME]") -> PipelineParams:
    """params.yaml's ``default`` pipeline; ``--pipeline NAME`` another pipeline's section (the
    robustness studies' stages in dvc.yaml); ``--profile NAME`` a profile, with the knobs of the
    section that runs it, else its own values (e.g. smoke). ``usage``: the stage's arguments,
    for the one-line error on any other."""
    argv = sys.argv[1:] if argv is None else argv
    params = load_params()
    if argv[:1] == ["--pipeline"] and len(argv) == 2:
        return params.for_pipeline(argv[1])
    if argv[:1] == ["--profile"] and len(argv) == 2:
        check_choice("profile", argv[1], group_options("profile"))
        return params.for_profile(argv[1])
    if argv:
        raise ValueError(f"usage: {Path(sys.argv[0]).name} {usage}; got {' '.join(argv)}")
    return params


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _stat(pid: int) -> list[str]:
    """/proc/<pid>/stat after the command name (state, ppid, ...); OSError once the pid is gone."""
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()


def _start_time(pid: int) -> str | None:
    """The start time of process ``pid`` (a pid alone can be reused); None once it has exited,
    a zombie included (DVC killed by TERM stays one until whoever started it reaps it)."""
    try:
        fields = _stat(pid)
    except OSError:
        return None
    return None if len(fields) < 20 or fields[0] in ("Z", "X") else fields[19]


def _launcher() -> int:
    """The process this stage must not outlive: under `dvc repro`, DVC itself, the nearest
    ancestor without DVC's DVC_STAGE variable (between the two there may be a shell, which DVC's
    death leaves alive: /bin/sh does not exec its command); otherwise the parent."""
    pid = os.getppid()
    if "DVC_STAGE" not in os.environ:
        return pid
    for _ in range(8):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            if not any(v.startswith(b"DVC_STAGE=") for v in env):
                return pid
            pid = int(_stat(pid)[1])
        except (OSError, ValueError, IndexError):
            break
    return os.getppid()


def stop_on_signals() -> None:
    """TERM and HUP stop the stage like Ctrl-C, and so does the death of DVC (or of the parent,
    when run by hand): DVC killed by TERM does not pass it on, and the stage would go on training
    without it. A HUP ignored on purpose (nohup, by hand) stays ignored, and nothing is watched."""
    signal.signal(signal.SIGTERM, _stop)
    detached = signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    if not detached:
        signal.signal(signal.SIGHUP, _stop)
    if detached and "DVC_STAGE" not in os.environ:
        return  # `nohup python pipelines/sweep.py &`: meant to outlive the shell that started it
    watched = _launcher()
    started = _start_time(watched)

    def alive() -> bool:
        if started is None:  # no /proc: the parent changes when it dies
            return os.getppid() == watched
        return _start_time(watched) == started

    def watch() -> None:
        while alive():
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()
