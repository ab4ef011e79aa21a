"""What the training loop records: between two reads of the device, the logged terms, kept there as
0-d tensors, and the time per step; and on disk, the checkpoint a resumed run starts from.

Reading a number computed on a GPU waits for every step queued before it, so the loop reads the
terms only every ``runtime.log_every`` steps, at epoch ends and before checkpoints: one wait for
all of them (``TermLog.read``). With several ranks that read is also where they agree, in one
collective, on the terms' means, on the signals any rank received and on whether a checkpoint is
due, so that every rank saves, stops or goes on at the same step.

A checkpoint holds the model, the optimizer, the random generator, the sampling position, the
epoch's running sums, and the run's cost so far: the wall and CPU seconds of every step and the
pretraining seconds of every attempt up to its last checkpoint, so that a run resumed after a
preemption reports what all its attempts cost, not what the last one did.
"""

from __future__ import annotations

import resource
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as tdist

from embreg.data import IndexStream
from embreg.data.augment import to_device
from embreg.distributed import DistInfo
from embreg.io import atomic_write


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
        flat = torch.cat([*parts, to_device(flag, device)])  # pinned, no wait: the read below is the one
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

    def __init__(self, device: torch.device, wall: list[float] | None = None, cpu: list[float] | None = None) -> None:
        self.per_step = device.type == "cpu"
        # appended to: a resumed run's times so far, so that its cost covers every attempt
        self.wall = [] if wall is None else wall
        self.cpu = [] if cpu is None else cpu
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


# every checkpoint has these; one without them is not ours (read_checkpoint sets it aside)
CHECKPOINT_KEYS = ("model", "optimizer", "generator", "perm", "pos", "history", "step", "sums", "counts",
                   "step_times", "resumed_at", "fingerprint")


@dataclass
class TrainState:
    """Everything a resumed run needs besides the model and optimizer."""

    stream: IndexStream
    history: list[dict[str, float]] = field(default_factory=list)
    step: int = 0  # optimizer steps done
    sums: dict[str, float] = field(default_factory=dict)  # running sums of the current epoch
    counts: dict[str, int] = field(default_factory=dict)  # how many steps each sum holds
    step_times: list[float] = field(default_factory=list)  # wall seconds of every step, every attempt
    resumed_at: list[int] = field(default_factory=list)  # steps at which this run was resumed
    cpu_times: list[float] = field(default_factory=list)  # CPU seconds of every step, every attempt
    seconds: float = 0.0  # pretraining wall seconds of the earlier attempts, each up to its last checkpoint


class CheckpointWarning(UserWarning):
    """A checkpoint could not be read: it was set aside and training starts over."""


def read_checkpoint(path: Path, map_location: Any = "cpu") -> dict[str, Any] | None:
    """The checkpoint at ``path``, or None when there is none. One that cannot be read
    (truncated, corrupt, not ours) is renamed to ``<name>.corrupt-<time>``, kept for
    inspection, with a warning, and None is returned: the run starts from scratch."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
        missing = [k for k in CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
        if missing:
            raise ValueError(f"lacks {', '.join(missing)}")
        return state
    except Exception as exc:  # noqa: BLE001 - whatever is wrong with it, it cannot be resumed from
        aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{time.time_ns() % 10**9}")
        path.rename(aside)
        warnings.warn(f"checkpoint {path} cannot be read ({type(exc).__name__}: {str(exc)[:200]}); "
                      f"kept as {aside.name}, training restarts from scratch", CheckpointWarning, stacklevel=2)
        return None


def load_state(ckpt_path: Path, model, optimizer, gen: torch.Generator, n_train: int) -> TrainState:
    """Restore from ``ckpt_path`` if it exists (strictly: a partial resume would be silent). The
    checkpoint is read to the CPU, where the generator and the sampling order live; the model's
    and optimizer's tensors are copied to their parameters' device by their ``load_state_dict``.
    The cost keys are optional: a checkpoint written before they existed resumes with its wall
    times and no earlier CPU times or seconds."""
    state = read_checkpoint(ckpt_path, "cpu")
    if state is None:
        return TrainState(IndexStream(n_train))
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    gen.set_state(state["generator"])
    return TrainState(IndexStream(n_train, state["perm"], state["pos"]), state["history"], state["step"],
                      state["sums"], state["counts"], state["step_times"], state["resumed_at"] + [state["step"]],
                      state.get("cpu_times", []), state.get("seconds", 0.0))


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """torch.save to a temporary file, then rename: a crash mid-write keeps the old one."""
    atomic_write(Path(path), lambda f: torch.save(state, f))


def checkpoint_state(model, optimizer, gen: torch.Generator, st: TrainState, fingerprint: str,
                     seconds: float) -> dict[str, Any]:
    """What ``save_checkpoint`` writes; ``seconds``: the pretraining seconds of every attempt so far."""
    return {
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "generator": gen.get_state(),
        "perm": st.stream.perm, "pos": st.stream.pos, "history": st.history, "step": st.step,
        "sums": st.sums, "counts": st.counts, "step_times": st.step_times, "resumed_at": st.resumed_at,
        "fingerprint": fingerprint, "cpu_times": st.cpu_times, "seconds": seconds,
    }
