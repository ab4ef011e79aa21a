"""Stopping what a sweep started: every process of its multiruns, for sure, before it exits.

Each multirun runs in its own session (``start_new_session``), so it leads a process group that
its submitit controller and jobs share. Submitit's job processes only log TERM ("Bypassing
signal SIGTERM"), and a job left behind would go on writing into results/ after the sweep has
exited: so TERM first, then KILL, then wait until the groups are empty.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

GRACE_S = 15.0  # after TERM, how long a job may take to checkpoint and stop before it is killed


def _group_alive(pgid: int) -> bool:
    """Whether a process (not a zombie) is left in process group ``pgid``."""
    if not Path("/proc/self/stat").is_file():  # no /proc: ask the kernel (zombies count)
        try:
            os.killpg(pgid, 0)
            return True
        except ProcessLookupError:
            return False
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()  # state, ppid, pgrp, ...
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


def stop_groups(procs: list[subprocess.Popen], grace: float = GRACE_S) -> None:
    """Stop every process the multiruns started: each multirun leads its own process group,
    which its submitit controller and jobs share. TERM first (a job checkpoints and records
    'interrupted'; embreg.preemption.stop_on_term), KILL what is left after ``grace`` seconds
    (submitit's own handler only logs TERM), and return only once the groups are empty, so
    that nothing writes into results/ after the sweep has exited. Ctrl-C and TERM are held off
    meanwhile: a second one must not cut this short."""
    main = threading.current_thread() is threading.main_thread()
    held = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
    try:
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 30.0)):
            for p in procs:
                try:
                    os.killpg(p.pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                for p in procs:
                    p.poll()  # reap the multiruns themselves
                if not any(_group_alive(p.pid) for p in procs):
                    return
                time.sleep(0.1)
    finally:
        for p in procs:
            p.poll()
        for s, h in held.items():
            signal.signal(s, h)
