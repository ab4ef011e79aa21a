"""Timing helpers of the benchmark: one measurement, medians of interleaved rounds, targets, and
the environment a result was measured in."""

from __future__ import annotations

import datetime as dt
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from embreg.io import git_revision
from embreg.params import REPO_ROOT

Measure = Callable[[], float]  # one measurement: returns seconds
SYNC_WARNING = "synchronizing CUDA operation"  # what sync debug mode "warn" says at each host sync


def log(msg: str) -> None:
    """One progress line per measurement (stderr, so stdout stays clean)."""
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def timed(fn: Callable[[], Any], sync: Callable[[], None] = lambda: None) -> Measure:
    """Wrap ``fn`` into a measurement of its wall time (``sync`` waits for a device)."""

    def measure() -> float:
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - t0

    return measure


def interleaved(measures: dict[str, Measure], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds of each measurement, run round-robin so drift hits all alike;
    the first ``warmup`` rounds are discarded."""
    times: dict[str, list[float]] = {name: [] for name in measures}
    for r in range(warmup + repeats):
        for name, measure in measures.items():
            t = measure()
            if r >= warmup:
                times[name].append(t)
    return {name: statistics.median(ts) for name, ts in times.items()}


@contextmanager
def counting_syncs(dev: torch.device) -> Iterator[list[warnings.WarningMessage]]:
    """Every warning inside, sync debug mode "warn" on for a GPU: count ``SYNC_WARNING`` in it."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if dev.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("warn")
        try:
            yield caught
        finally:
            if dev.type == "cuda":
                torch.cuda.set_sync_debug_mode("default")


def n_syncs(caught: list[warnings.WarningMessage]) -> int:
    return sum(SYNC_WARNING in str(w.message) for w in caught)


def target(value: float | bool, goal: float | bool, op: str) -> dict[str, Any]:
    """A target entry; ``op`` is how value compares with goal to count as met."""
    met = {">=": lambda: value >= goal, "<=": lambda: value <= goal, "==": lambda: value == goal}[op]()
    return {"value": value, "target": goal, "op": op, "met": bool(met)}


def not_measured(goal: float | bool, op: str, reason: str) -> dict[str, Any]:
    """A target this run could not measure (no GPU, no run to read, a part that failed): no
    value, ``met`` None, and why."""
    return {"value": None, "target": goal, "op": op, "met": None, "reason": reason}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment(quick: bool, repeats: int) -> dict[str, Any]:
    return {
        "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git_revision": git_revision(REPO_ROOT), "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(), "cpu": cpu_model(), "python": platform.python_version(),
        "quick": quick, "repeats": repeats, "warmup": 1,
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
