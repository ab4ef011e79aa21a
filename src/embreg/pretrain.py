"""Pretraining: one arm's objective on two augmented views, checkpointed and resumable.

A checkpoint is written at the end of every epoch, every ``runtime.checkpoint_every_s`` seconds,
and at the next step boundary after a preemption or time-limit signal (``embreg.preemption``).
``pretrain`` resumes from ``ckpt_path`` by itself, mid-epoch included: the model, optimizer,
sampling position, random-generator state and the epoch's running sums are restored, so an
interrupted run ends bit-identical (on CPU) to an uninterrupted one.

With several processes (``embreg.distributed``) every rank draws the same global batch and the
same views, trains on its contiguous slice, and gradients are averaged across ranks; the
regularizers see the whole batch through ``gather_with_grad``. Rank 0 writes the checkpoints.
"""

from __future__ import annotations

import math
import resource
import time
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from embreg.config import RunConfig
from embreg.data import AugmentSpec, IndexStream, Normalizer, Split, augment, batch_images, two_views
from embreg.distributed import DistInfo, average_gradients, mean_over_ranks
from embreg.io import atomic_write
from embreg.models import EmbeddingModel
from embreg.objective import metric_loss, ssl_loss
from embreg.optim import build_optimizer, cosine_schedule, set_lr
from embreg.preemption import Every, SignalCheckpoint

SINGLE = DistInfo()


class DivergedError(RuntimeError):
    """The loss became NaN or infinite."""


def epochs(cfg: RunConfig) -> int:
    """The arm's pretraining epochs: ``pretrain.supervised_epochs`` for the supervised
    reference when set, else ``pretrain.epochs``."""
    if cfg.objective.kind == "supervised" and cfg.pretrain.supervised_epochs is not None:
        return cfg.pretrain.supervised_epochs
    return cfg.pretrain.epochs


def steps_per_epoch(cfg: RunConfig, n_train: int) -> int:
    if cfg.pretrain.steps_per_epoch:
        return cfg.pretrain.steps_per_epoch
    return max(1, n_train // cfg.optim.batch_size)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def augment_spec(cfg: RunConfig) -> AugmentSpec:
    """The pretraining views: every AugmentSpec field the dataset config sets (lists as tuples);
    the others keep AugmentSpec's defaults."""
    ds = cfg.dataset
    shared = {f.name: getattr(ds, f.name) for f in fields(AugmentSpec) if hasattr(ds, f.name)}
    return AugmentSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in shared.items()})


def _rank_slice(x: torch.Tensor, dist: DistInfo) -> torch.Tensor:
    per = len(x) // dist.world_size
    return x[dist.rank * per : (dist.rank + 1) * per]


def train_step(
    model: EmbeddingModel, x: torch.Tensor, y: torch.Tensor, cfg: RunConfig,
    norm: Normalizer, gen: torch.Generator, dist: DistInfo = SINGLE,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of one global batch (uint8 images x, labels y) under the arm's objective, on this
    rank's slice of it."""
    obj = cfg.objective
    spec = augment_spec(cfg)
    if obj.kind == "supervised":
        v = augment(x, spec, norm, gen)
        if dist.world_size > 1:
            v, y = _rank_slice(v, dist), _rank_slice(y, dist)
        with _autocast(cfg, x.device):
            logits = model.head(model.backbone(model.prepare_input(v)))
        loss = F.cross_entropy(logits.float(), y)
        value = float(loss.detach())
        return loss, {"loss": value, "cross_entropy": value}
    if obj.kind == "metric":  # one labelled view; the embedding is the projector's output
        v = augment(x, spec, norm, gen)
        if dist.world_size > 1:
            v, y = _rank_slice(v, dist), _rank_slice(y, dist)
        with _autocast(cfg, x.device):
            z, _ = model(v)
        return metric_loss(z.float(), y, obj)
    v1, v2 = two_views(x, spec, norm, gen)
    if dist.world_size > 1:  # the same views as one process would make; this rank's slice
        v1, v2 = (_rank_slice(v, dist) for v in (v1, v2))
    taps = obj.layers == "all"
    with _autocast(cfg, x.device):
        z1, f1 = model(v1, taps=taps)
        z2, f2 = model(v2, taps=taps)
    t1, t2 = ({k: v.float() for k, v in f.taps.items()} for f in (f1, f2))
    return ssl_loss(z1.float(), z2.float(), t1, t2, obj)


def _autocast(cfg: RunConfig, device: torch.device) -> torch.autocast:
    """bf16 autocast around the network when the profile asks for it; a no-op for fp32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.pretrain.precision == "bf16")


@dataclass
class TrainState:
    """Everything a resumed run needs besides the model and optimizer."""

    stream: IndexStream
    history: list[dict[str, float]] = field(default_factory=list)
    step: int = 0  # optimizer steps done
    sums: dict[str, float] = field(default_factory=dict)  # running sums of the current epoch
    step_times: list[float] = field(default_factory=list)
    resumed_at: list[int] = field(default_factory=list)  # steps at which this run was resumed


CHECKPOINT_KEYS = ("model", "optimizer", "generator", "perm", "pos", "history", "step", "sums", "step_times",
                   "resumed_at", "fingerprint")


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
    """Restore from ``ckpt_path`` if it exists (strictly: a partial resume would be silent)."""
    state = read_checkpoint(ckpt_path, next(model.parameters()).device)
    if state is None:
        return TrainState(IndexStream(n_train))
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    gen.set_state(state["generator"])
    return TrainState(IndexStream(n_train, state["perm"], state["pos"]), state["history"],
                      state["step"], state["sums"], state["step_times"], state["resumed_at"] + [state["step"]])


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """torch.save to a temporary file, then rename: a crash mid-write keeps the old one."""
    atomic_write(Path(path), lambda f: torch.save(state, f))


def save_state(ckpt_path: Path, model, optimizer, gen: torch.Generator, st: TrainState, fingerprint: str) -> None:
    save_checkpoint(ckpt_path, {
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "generator": gen.get_state(),
        "perm": st.stream.perm, "pos": st.stream.pos, "history": st.history, "step": st.step,
        "sums": st.sums, "step_times": st.step_times, "resumed_at": st.resumed_at, "fingerprint": fingerprint,
    })


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


def pretrain(
    cfg: RunConfig, model: EmbeddingModel, train: Split, ckpt_path: Path,
    progress: bool = True, fingerprint: str = "", dist: DistInfo = SINGLE,
) -> dict[str, Any]:
    """Train ``model`` in place; returns {"history": [per-epoch means], "cost": {...},
    "resumed_at": [steps at which it was resumed from a checkpoint]}.

    Checkpoints are written atomically (see the module docstring) and resumed from if present.
    """
    device = next(model.parameters()).device
    norm = Normalizer(cfg.dataset.mean, cfg.dataset.std)
    optimizer = build_optimizer(model, cfg.optim)
    spe = steps_per_epoch(cfg, len(train))
    total = epochs(cfg) * spe
    lrs = cosine_schedule(cfg.optim.lr, total, cfg.optim.warmup_epochs * spe)
    gen = torch.Generator().manual_seed(cfg.seed)
    st = load_state(ckpt_path, model, optimizer, gen, len(train))
    model.train()
    periodic = Every(cfg.runtime.checkpoint_every_s)

    def save() -> None:
        if dist.is_main:
            save_state(ckpt_path, model, optimizer, gen, st, fingerprint)
        periodic.reset()

    cpu_times: list[float] = []  # this process's steps only (not checkpointed): see cost_summary
    bar = tqdm(total=total, initial=st.step, desc=f"{cfg.arm}/seed{cfg.seed}",
               disable=not progress or not dist.is_main, mininterval=5, leave=False)
    with SignalCheckpoint() as signals:
        while st.step < total:
            epoch, i = divmod(st.step, spe)
            t0, c0 = time.perf_counter(), time.process_time()
            set_lr(optimizer, lrs[st.step])
            idx = st.stream.next(cfg.optim.batch_size, gen)
            x, y = batch_images(train.images, idx, device), train.labels[idx].to(device)
            try:
                loss, terms = train_step(model, x, y, cfg, norm, gen, dist)
                terms = mean_over_ranks(terms)  # the same on every rank: all stop together
            except torch.linalg.LinAlgError as exc:  # an SVD of a NaN embedding
                raise DivergedError(f"loss is nan (SVD failed: {exc}) at epoch {epoch} step {i}") from None
            if not math.isfinite(terms["loss"]):
                raise DivergedError(f"loss is {terms['loss']} at epoch {epoch} step {i}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            average_gradients(model)
            optimizer.step()
            st.step_times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)
            for k, v in terms.items():
                st.sums[k] = st.sums.get(k, 0.0) + v
            st.step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{terms['loss']:.3f}", refresh=False)
            if st.step % spe == 0:
                st.history.append({"epoch": epoch + 1, "lr": lrs[st.step - 1],
                                   **{k: v / spe for k, v in st.sums.items()}})
                st.sums = {}
                save()
            elif signals.pending or periodic.due():
                save()
            if signals.pending:
                signals.forward_pending()
    bar.close()
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):  # the last update blew up
        raise DivergedError(f"weights are not finite after the last step ({st.step})")
    return {"history": st.history, "cost": cost_summary(st.step_times, cfg.optim.batch_size, device, cpu_times),
            "resumed_at": st.resumed_at}
