"""What the training loop records between two reads of the device: the logged terms, kept there as
0-d tensors, and the time per step.

Reading a number computed on a GPU waits for every step queued before it, so the loop reads the
terms only every ``runtime.log_every`` steps, at epoch ends and before checkpoints: one wait for
all of them (``TermLog.read``). With several ranks that read is also where they agree, in one
collective, on the terms' means, on the signals any rank received and on whether a checkpoint is
due, so that every rank saves, stops or goes on at the same step.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Sequence

import torch
import torch.distributed as tdist

from embreg.distributed import DistInfo


class TermLog:
    """The logged terms of the steps since the last read, on the device. A key may be missing
    from some steps (terms logged every ``pretrain.monitor_every`` steps only)."""

    def __init__(self) -> None:
        self.pending: dict[str, list[torch.Tensor]] = {}

    def add(self, terms: dict[str, torch.Tensor]) -> None:
        for k, v in terms.items():
            self.pending.setdefault(k, []).append(v.detach().reshape(()))

    def read(self, dist: DistInfo, flags: Sequence[float] = ()) -> tuple[dict[str, list[float]], list[float]]:
        """Every pending value as a Python float, in step order (one wait for the device), each
        the mean over ranks; and ``flags`` (one number per rank) summed over ranks. Empties the log."""
        pending, self.pending = self.pending, {}
        device = next((v[0].device for v in pending.values()), torch.device("cpu"))
        if dist.world_size > 1 and tdist.get_backend() == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        parts = [torch.stack([v.to(device, torch.float64) for v in vals]) for vals in pending.values()]
        flag = torch.tensor([float(f) for f in flags], dtype=torch.float64)
        flat = torch.cat([*parts, flag.to(device)])
        if dist.world_size > 1:
            tdist.all_reduce(flat)
            n_values = flat.numel() - len(flags)
            flat[:n_values] /= dist.world_size
        numbers = flat.tolist()
        out, at = {}, 0
        for k, vals in pending.items():
            out[k], at = numbers[at : at + len(vals)], at + len(vals)
        return out, numbers[at:]


class StepClock:
    """Wall and CPU seconds per step. A step on the CPU is done when its Python returns, so it
    is timed alone; on a GPU it is only queued, so the time between two reads (each waits for the
    device) is shared equally among the steps between them. ``pause`` leaves time out (a
    checkpoint's writing)."""

    def __init__(self, device: torch.device, wall: list[float] | None = None) -> None:
        self.per_step = device.type == "cpu"
        self.wall = [] if wall is None else wall  # appended to (a resumed run's times so far)
        self.cpu: list[float] = []
        self.pause()

    def pause(self) -> None:
        self._t, self._c, self._n = time.perf_counter(), time.process_time(), 0

    def step_started(self) -> None:
        if self.per_step:
            self.pause()

    def step_done(self) -> None:
        self._n += 1
        if self.per_step:
            self._record()

    def read_done(self) -> None:
        if not self.per_step:
            self._record()

    def _record(self) -> None:
        if self._n:
            wall, cpu = time.perf_counter() - self._t, time.process_time() - self._c
            self.wall += [wall / self._n] * self._n
            self.cpu += [cpu / self._n] * self._n
        self.pause()


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _median_after_first(times: list[float]) -> float:
    timed = sorted(times[1:] or times)  # the first step includes allocator warm-up
    return timed[len(timed) // 2] if timed else float("nan")


def cost_summary(
    step_times: list[float], batch_size: int, device: torch.device, cpu_times: list[float] | None = None,
) -> dict[str, float]:
    """Median step time, peak memory and, given ``cpu_times``, the median CPU seconds per step
    (all of this process's threads): a step whose wall time is well above its CPU time over
    the thread count waited for a core, i.e. other processes were running."""
    med = _median_after_first(step_times)
    out = {"steps": len(step_times), "sec_per_step": med,
           # training samples per second; each sample is two views in the SSL arms
           "images_per_sec": batch_size / med, "peak_memory_mb": peak_memory_mb(device)}
    if cpu_times:
        out["cpu_sec_per_step"] = _median_after_first(cpu_times)
    return out
