"""Surviving preemption and time limits: checkpoint at a step boundary when a signal arrives,
then let the signal do what it would have done.

On SLURM, submitit asks for USR2 before the time limit (and `scancel --signal=USR2` sends it by
hand); its handler requeues the job and exits. A preemption sends TERM, which submitit only logs;
SLURM kills the job after the partition's GraceTime and requeues it itself. In both cases the
requeued job calls the same run again, which resumes from the checkpoint.

``SignalCheckpoint`` holds the signal back while a training step is half done (the model and
optimizer would be inconsistent), so the training loop can save a clean checkpoint first and
then hand the signal on to the handler that was installed before (submitit's, or the default).
SLURM sends USR2 once: a signal is never dropped, wherever in the loop it arrives.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Sequence
from types import FrameType, TracebackType

SIGNALS = (signal.SIGUSR2, signal.SIGTERM)


class SignalCheckpoint:
    """Context manager: USR2 and TERM are noted, not acted on, until the training loop is at a
    step boundary where it can checkpoint (``settle``) and hand them on (``forward``).

    The handler may run between any two bytecodes of the loop (the read of the logged terms
    included, which on a GPU waits for the device and under DDP for the other ranks); it only
    appends to ``noted``. The loop never rewrites that list, it only moves ``done`` past what it
    acted on, so a signal that arrives while the loop decides is kept for the next boundary.
    Whatever is still owed when the block is left is raised again once the previous handlers
    are back, so no signal is swallowed."""

    def __init__(self, signals: tuple[signal.Signals, ...] = SIGNALS) -> None:
        self.signals = signals
        self.noted: list[int] = []  # appended to by the handler only
        self.done = 0  # noted[:done] are acted on (or being acted on)
        self._owed: list[int] = []  # being handed on by ``forward``
        self._prev: dict[int, object] = {}

    def __enter__(self) -> SignalCheckpoint:
        if threading.current_thread() is threading.main_thread():  # handlers: main thread only
            for sig in self.signals:
                self._prev[sig] = signal.signal(sig, self._note)
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        left = list(dict.fromkeys([*self._owed, *self.noted[self.done:]]))
        self.done, self._owed = len(self.noted), []
        for sig, prev in self._prev.items():
            signal.signal(sig, prev)  # type: ignore[arg-type]
        installed, self._prev = self._prev, {}
        for signum in left:  # noted after the last boundary: the restored handler acts on it now
            if signum in installed:
                signal.raise_signal(signum)

    def _note(self, signum: int, frame: FrameType | None) -> None:
        self.noted.append(signum)

    def mark(self) -> tuple[int, list[float]]:
        """Where the noted signals end now, and one flag per signal: noted there and not acted on
        yet (what this rank tells the others)."""
        end = len(self.noted)
        new = set(self.noted[self.done:end])
        return end, [float(s in new) for s in self.signals]

    def settle(self, agreed: Sequence[float], mark: int, alone: bool) -> list[int]:
        """The signals to act on at this boundary, marked as acted on: those the ranks agreed on
        (``agreed``: one flag per signal, summed over ranks) and, for a process ``alone``, every
        one noted since ``mark`` (during the read, say). Several ranks act only on what they
        agreed on: a signal noted since ``mark`` waits for their next agreement."""
        act = [s for s, f in zip(self.signals, agreed, strict=True) if f > 0]
        end = len(self.noted) if alone else mark  # read once: a later signal stays for the next boundary
        act += [s for s in dict.fromkeys(self.noted[self.done:end]) if s not in act]
        self.done = max(self.done, end)
        return act

    def forward(self, signums: Sequence[int]) -> None:
        """Deliver ``signums`` to the handlers installed before us. Submitit's USR2 handler
        requeues the job and exits; a default handler ends the process; submitit's TERM handler
        only logs, and training goes on until SLURM kills the job. One not delivered because an
        earlier one ended the block is raised again on leaving it."""
        self._owed = list(dict.fromkeys(signums))
        while self._owed:
            signum = self._owed[0]
            prev = self._prev.get(signum, signal.SIG_DFL)
            del self._owed[0]
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
