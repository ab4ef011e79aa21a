"""Timing helpers of the benchmark: one measurement, medians of interleaved rounds, targets."""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

Measure = Callable[[], float]  # one measurement: returns seconds


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


def target(value: float | bool, goal: float | bool, op: str) -> dict[str, Any]:
    """A target entry; ``op`` is how value compares with goal to count as met."""
    met = {">=": lambda: value >= goal, "<=": lambda: value <= goal, "==": lambda: value == goal}[op]()
    return {"value": value, "target": goal, "op": op, "met": bool(met)}
