"""Surviving preemption and time limits: checkpoint at a step boundary when a signal arrives,
then let the signal do what it would have done.

On SLURM, submitit asks for USR2 before the time limit (and `scancel --signal=USR2` sends it by
hand); its handler requeues the job and exits. A preemption sends TERM, which submitit only logs;
SLURM kills the job after the partition's GraceTime and requeues it itself. In both cases the
requeued job calls the same run again, which resumes from the checkpoint.

``SignalCheckpoint`` holds the signal back while a training step is half done (the model and
optimizer would be inconsistent), so the training loop can save a clean checkpoint first and
then hand the signal on to the handler that was installed before (submitit's, or the default).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from types import FrameType, TracebackType

SIGNALS = (signal.SIGUSR2, signal.SIGTERM)


class SignalCheckpoint:
    """Context manager: USR2 and TERM are noted, not acted on, until ``forward_pending``."""

    def __init__(self, signals: tuple[signal.Signals, ...] = SIGNALS) -> None:
        self.signals = signals
        self.pending: list[int] = []
        self._prev: dict[int, object] = {}

    def __enter__(self) -> SignalCheckpoint:
        if threading.current_thread() is threading.main_thread():  # handlers: main thread only
            for sig in self.signals:
                self._prev[sig] = signal.signal(sig, self._note)
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        for sig, prev in self._prev.items():
            signal.signal(sig, prev)  # type: ignore[arg-type]
        self._prev.clear()

    def _note(self, signum: int, frame: FrameType | None) -> None:
        self.pending.append(signum)

    def forward_pending(self) -> None:
        """Deliver the noted signals to the handlers installed before us. Submitit's USR2
        handler requeues the job and exits; a default handler ends the process; submitit's
        TERM handler only logs, and training goes on until SLURM kills the job."""
        pending, self.pending = self.pending, []
        for signum in dict.fromkeys(pending):
            prev = self._prev.get(signum, signal.SIG_DFL)
            if callable(prev):
                prev(signum, None)
            elif prev == signal.SIG_DFL:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
                time.sleep(1)  # delivery is asynchronous; the process ends here


class Stopped(KeyboardInterrupt):
    """TERM reached a job of this machine's launcher: the sweep that started it is stopping."""


def stop_on_term() -> None:
    """Make TERM stop this process (as Ctrl-C does) instead of submitit's "bypassing" it: on
    this machine nobody requeues a job, and a sweep stopped by Ctrl-C or DVC must not leave
    one training. Inside ``SignalCheckpoint`` the checkpoint is written first, then this runs."""
    def stop(signum: int, frame: FrameType | None) -> None:
        raise Stopped(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)


class Every:
    """True once ``seconds`` have passed since the last reset (periodic checkpoints)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.last = time.monotonic()

    def due(self) -> bool:
        return self.seconds >= 0 and time.monotonic() - self.last >= self.seconds

    def reset(self) -> None:
        self.last = time.monotonic()
