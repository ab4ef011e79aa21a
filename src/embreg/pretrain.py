"""Pretraining: one arm's objective on two augmented views, checkpointed and resumable.

A checkpoint is written at the end of every epoch, every ``runtime.checkpoint_every_s`` seconds,
and at the next step boundary after a preemption or time-limit signal (``embreg.preemption``).
``pretrain`` resumes from ``ckpt_path`` by itself, mid-epoch included: the model, optimizer,
sampling position, random-generator state and the epoch's running sums are restored, so an
interrupted run ends bit-identical (on CPU) to an uninterrupted one.

With several processes (``embreg.distributed``) every rank draws the same global batch and the
same augmentation parameters, augments and trains on its contiguous slice, and gradients are
averaged across ranks; the regularizers see the whole batch through ``gather_with_grad``. Rank 0
writes the checkpoints; the ranks agree on signals and checkpoints where they read their logged
terms (embreg.steplog), so all of them save, stop or go on at the same step.
"""

from __future__ import annotations

import math
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
from embreg.data.augment import to_device
from embreg.distributed import DistInfo, average_gradients
from embreg.io import atomic_write
from embreg.models import EmbeddingModel
from embreg.objective import metric_loss, ssl_loss
from embreg.optim import build_optimizer, cosine_schedule, set_lr
from embreg.preemption import SIGNALS, Every, SignalCheckpoint
from embreg.steplog import StepClock, TermLog, cost_summary, peak_memory_mb  # noqa: F401 - the bench's
from embreg.terms.spectral import NonFiniteEmbeddingError

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


def augment_spec(cfg: RunConfig) -> AugmentSpec:
    """The pretraining views: every AugmentSpec field the dataset config sets (lists as tuples);
    the others keep AugmentSpec's defaults."""
    ds = cfg.dataset
    shared = {f.name: getattr(ds, f.name) for f in fields(AugmentSpec) if hasattr(ds, f.name)}
    return AugmentSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in shared.items()})


def _rank_part(n: int, dist: DistInfo) -> slice | None:
    """This rank's contiguous rows of a global batch of ``n`` (None on one process)."""
    if dist.world_size == 1:
        return None
    per = n // dist.world_size
    return slice(dist.rank * per, (dist.rank + 1) * per)


def train_step(
    model: EmbeddingModel, x: torch.Tensor, y: torch.Tensor, cfg: RunConfig,
    norm: Normalizer, gen: torch.Generator, dist: DistInfo = SINGLE, monitor: bool = True,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss of one global batch (uint8 images x, labels y) under the arm's objective, on this
    rank's slice of it, and the logged terms (detached 0-d tensors, read by the caller when it
    chooses: reading one waits for the device). Every rank draws the whole batch's augmentation
    parameters and augments only its own rows. ``monitor``: also the terms the arm does not
    train with (``pretrain.monitor_every``)."""
    obj = cfg.objective
    spec = augment_spec(cfg)
    part = _rank_part(x.shape[0], dist)
    if part is not None and obj.kind in ("supervised", "metric"):
        y = y[part]
    if obj.kind == "supervised":
        v = augment(x, spec, norm, gen, part=part)
        with _autocast(cfg, v.device):
            logits = model.head(model.backbone(model.prepare_input(v)))
        loss = F.cross_entropy(logits.float(), y)
        return loss, {"loss": loss.detach(), "cross_entropy": loss.detach()}
    if obj.kind == "metric":  # one labelled view; the embedding is the projector's output
        v = augment(x, spec, norm, gen, part=part)
        with _autocast(cfg, v.device):
            z, _ = model(v)
        return metric_loss(z.float(), y, obj, monitor)
    v1, v2 = two_views(x, spec, norm, gen, part=part)  # the same views as one process would make
    taps = obj.layers == "all"
    with _autocast(cfg, v1.device):
        z1, f1 = model(v1, taps=taps)
        z2, f2 = model(v2, taps=taps)
        heads = {name: (h(z1), h(z2)) for name, h in model.heads.items()}  # e.g. SimSiam's predictor
    t1, t2 = ({k: v.float() for k, v in f.taps.items()} for f in (f1, f2))
    heads = {name: tuple(p.float() for p in out) for name, out in heads.items()}
    return ssl_loss(z1.float(), z2.float(), t1, t2, obj, monitor, heads)


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
    counts: dict[str, int] = field(default_factory=dict)  # how many steps each sum holds
    step_times: list[float] = field(default_factory=list)
    resumed_at: list[int] = field(default_factory=list)  # steps at which this run was resumed


CHECKPOINT_KEYS = ("model", "optimizer", "generator", "perm", "pos", "history", "step", "sums", "counts",
                   "step_times", "resumed_at", "fingerprint")


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
    and optimizer's tensors are copied to their parameters' device by their ``load_state_dict``."""
    state = read_checkpoint(ckpt_path, "cpu")
    if state is None:
        return TrainState(IndexStream(n_train))
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    gen.set_state(state["generator"])
    return TrainState(IndexStream(n_train, state["perm"], state["pos"]), state["history"], state["step"],
                      state["sums"], state["counts"], state["step_times"], state["resumed_at"] + [state["step"]])


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """torch.save to a temporary file, then rename: a crash mid-write keeps the old one."""
    atomic_write(Path(path), lambda f: torch.save(state, f))


def save_state(ckpt_path: Path, model, optimizer, gen: torch.Generator, st: TrainState, fingerprint: str) -> None:
    save_checkpoint(ckpt_path, {
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "generator": gen.get_state(),
        "perm": st.stream.perm, "pos": st.stream.pos, "history": st.history, "step": st.step,
        "sums": st.sums, "counts": st.counts, "step_times": st.step_times, "resumed_at": st.resumed_at, "fingerprint": fingerprint,
    })


DEVICE_DATA_BYTES = 2 << 30  # a training set up to this size is copied to the GPU once (CIFAR: 150 MB)


def _on_device(train: Split, device: torch.device) -> tuple[Any, torch.Tensor]:
    """The training images and labels where batches are cut from: on the GPU when they fit."""
    if device.type == "cuda" and isinstance(train.images, torch.Tensor) and train.images.nbytes <= DEVICE_DATA_BYTES:
        return train.images.to(device), train.labels.to(device)
    return train.images, train.labels


def pretrain(
    cfg: RunConfig, model: EmbeddingModel, train: Split, ckpt_path: Path,
    progress: bool = True, fingerprint: str = "", dist: DistInfo = SINGLE,
) -> dict[str, Any]:
    """Train ``model`` in place; returns {"history": [per-epoch means], "cost": {...},
    "resumed_at": [steps at which it was resumed from a checkpoint]}.

    Checkpoints are written atomically (see the module docstring) and resumed from if present.
    The logged terms are read every ``runtime.log_every`` steps and at epoch ends (embreg.steplog):
    a non-finite loss stops the run there, naming the first step it appeared at.
    """
    device = next(model.parameters()).device
    norm = Normalizer(cfg.dataset.mean, cfg.dataset.std)
    optimizer = build_optimizer(model, cfg.optim)
    spe = steps_per_epoch(cfg, len(train))
    total = epochs(cfg) * spe
    lrs = cosine_schedule(cfg.optim.lr, total, cfg.optim.warmup_epochs * spe)
    gen = torch.Generator().manual_seed(cfg.seed)
    st = load_state(ckpt_path, model, optimizer, gen, len(train))
    images, labels = _on_device(train, device)
    model.train()
    periodic = Every(cfg.runtime.checkpoint_every_s)
    log, clock = TermLog(), StepClock(device, st.step_times)
    first = st.step  # the step the log's values start at

    def save() -> None:
        if dist.is_main:
            save_state(ckpt_path, model, optimizer, gen, st, fingerprint)
        periodic.reset()
        clock.pause()

    def read(flags: list[float]) -> list[float]:
        """Fold the logged terms into the epoch's sums (stopping at a non-finite loss); the flags
        summed over ranks."""
        nonlocal first
        values, agreed = log.read(dist, flags)
        clock.read_done()
        for j, v in enumerate(values.get("loss", [])):
            if not math.isfinite(v):
                raise DivergedError(f"loss is {v} at epoch {(first + j) // spe} step {(first + j) % spe}")
        for k, vals in values.items():
            for v in vals:  # one at a time: the same sums however the steps were split between reads
                st.sums[k] = st.sums.get(k, 0.0) + v
            st.counts[k] = st.counts.get(k, 0) + len(vals)
        first = st.step
        if values.get("loss"):
            bar.set_postfix(loss=f"{values['loss'][-1]:.3f}", refresh=False)
        return agreed

    bar = tqdm(total=total, initial=st.step, desc=f"{cfg.arm}/seed{cfg.seed}",
               disable=not progress or not dist.is_main, mininterval=5, leave=False)
    with SignalCheckpoint() as signals:
        while st.step < total:
            epoch, i = divmod(st.step, spe)
            clock.step_started()
            set_lr(optimizer, lrs[st.step])
            at = to_device(st.stream.next(cfg.optim.batch_size, gen), labels.device)  # one copy, if any
            x, y = batch_images(images, at, device), to_device(labels[at], device)
            try:
                loss, terms = train_step(model, x, y, cfg, norm, gen, dist, st.step % cfg.pretrain.monitor_every == 0)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
            except NonFiniteEmbeddingError as exc:  # only a non-finite embedding: a solver failure is retried
                read([0.0] * (len(SIGNALS) + 1))  # names an unread earlier step's non-finite loss first
                raise DivergedError(f"loss is nan ({exc}) at epoch {epoch} step {i}") from None
            average_gradients(model)
            optimizer.step()
            log.add(terms)
            st.step += 1
            clock.step_done()
            bar.update(1)
            # reads at fixed steps (the same on every rank); one process also reads when it must save
            wanted = [float(s in signals.pending) for s in SIGNALS] + [float(periodic.due())]
            epoch_end = st.step % spe == 0
            if not (epoch_end or st.step % cfg.runtime.log_every == 0 or (dist.world_size == 1 and any(wanted))):
                continue
            agreed = read(wanted)
            signals.pending = [s for s, f in zip(SIGNALS, agreed[: len(SIGNALS)], strict=True) if f > 0]
            if epoch_end:
                st.history.append({"epoch": epoch + 1, "lr": lrs[st.step - 1],
                                   **{k: v / st.counts[k] for k, v in st.sums.items()}})
                st.sums, st.counts = {}, {}
            if epoch_end or any(agreed):
                save()
            if signals.pending:
                signals.forward_pending()
    bar.close()
    if not bool(torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all()):  # the last update blew up
        raise DivergedError(f"weights are not finite after the last step ({st.step})")
    return {"history": st.history, "cost": cost_summary(st.step_times, cfg.optim.batch_size, device, clock.cpu),
            "resumed_at": st.resumed_at}
