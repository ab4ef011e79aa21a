"""Pretraining: one arm's objective on two augmented views, checkpointed and resumable.

A checkpoint is written at the end of every epoch, every ``runtime.checkpoint_every_s`` seconds,
and at the next step boundary after a preemption or time-limit signal (``embreg.preemption``).
``pretrain`` resumes from ``ckpt_path`` by itself, mid-epoch included: the model, optimizer,
sampling position, random-generator state and the epoch's running sums are restored, so an
interrupted run ends bit-identical (on CPU) to an uninterrupted one; its cost (seconds, per-step
times) covers every attempt; a temporary file left by a process killed mid-write is removed.
The checkpoint's contents live in ``embreg.steplog``.

Divergence is a non-finite loss or embedding, nothing else: an eigensolver failure on a finite
embedding is retried (``embreg.terms.spectral.eigh``), and one that fails everywhere fails the run.

With several processes (``embreg.distributed``) every rank draws the same global batch and the
same augmentation parameters, augments and trains on its contiguous slice, and gradients are
averaged across ranks; the regularizers see the whole batch through ``gather_with_grad``. Rank 0
writes the checkpoints; the ranks agree on signals and checkpoints where they read their logged
terms (embreg.steplog), so all of them save, stop or go on at the same step.
"""

from __future__ import annotations

import math
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from embreg.config import RunConfig
from embreg.data import AugmentSpec, Normalizer, Split, augment, batch_images, two_views
from embreg.data.augment import to_device
from embreg.distributed import DistInfo, average_gradients, rank_rows
from embreg.io import remove_partial_writes
from embreg.models import EmbeddingModel
from embreg.objective import metric_loss, ssl_loss
from embreg.optim import build_optimizer, cosine_schedule, set_lr
from embreg.preemption import SIGNALS, Every, SignalCheckpoint
from embreg.steplog import (  # noqa: F401 - re-exported: the bench's, the tests' and run.py's
    CHECKPOINT_KEYS,
    CheckpointWarning,
    StepClock,
    TermLog,
    TrainState,
    checkpoint_state,
    cost_summary,
    load_state,
    peak_memory_mb,
    read_checkpoint,
    save_checkpoint,
)
from embreg.terms.spectral import NonFiniteEmbeddingError

SINGLE = DistInfo()


class DivergedError(RuntimeError):
    """The loss (or an embedding an eigensolver was given) became NaN or infinite."""


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
    part = rank_rows(x.shape[0], dist)
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


# A training set up to this size is copied to the GPU once (CIFAR-10: 150 MB, Fashion-MNIST: 47 MB),
# shared by the runs on one GPU: each gets this divided by ``runtime.jobs_per_gpu``, so three runs
# never hold more than one would (ImageNet streams from disk whatever the budget).
DEVICE_DATA_BYTES = 2 << 30


def device_data_budget(jobs_per_gpu: int) -> int:
    """Bytes of training data one run may keep on a GPU that ``jobs_per_gpu`` runs share."""
    return DEVICE_DATA_BYTES // max(1, jobs_per_gpu)


def _on_device(train: Split, device: torch.device, jobs_per_gpu: int = 1) -> tuple[Any, torch.Tensor]:
    """The training images and labels where batches are cut from: on the GPU when they fit this
    run's share of it (``device_data_budget``)."""
    budget = device_data_budget(jobs_per_gpu)
    if device.type == "cuda" and isinstance(train.images, torch.Tensor) and train.images.nbytes <= budget:
        return train.images.to(device), train.labels.to(device)
    return train.images, train.labels


wall_clock = time.perf_counter  # the pretraining seconds' clock (a test may stand in for it)


class _Loop:
    """The training loop's state and its two moves: a step, and the boundary after it (read the
    logged terms when due, close an epoch, checkpoint, hand signals on)."""

    def __init__(self, cfg: RunConfig, model: EmbeddingModel, train: Split, ckpt_path: Path,
                 fingerprint: str, dist: DistInfo, progress: bool) -> None:
        self.started = wall_clock()
        self.cfg, self.model, self.ckpt_path, self.fingerprint, self.dist = cfg, model, ckpt_path, fingerprint, dist
        self.device = next(model.parameters()).device
        self.norm = Normalizer(cfg.dataset.mean, cfg.dataset.std)
        self.optimizer = build_optimizer(model, cfg.optim)
        self.spe = steps_per_epoch(cfg, len(train))
        self.total = epochs(cfg) * self.spe
        self.lrs = cosine_schedule(cfg.optim.lr, self.total, cfg.optim.warmup_epochs * self.spe)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        if dist.is_main:  # a process killed while writing left its temporary file; nobody else writes here
            remove_partial_writes(ckpt_path)
        self.st = load_state(ckpt_path, model, self.optimizer, self.gen, len(train))
        self.images, self.labels = _on_device(train, self.device, cfg.runtime.jobs_per_gpu)
        model.train()
        self.periodic = Every(cfg.runtime.checkpoint_every_s)
        self.log, self.clock = TermLog(), StepClock(self.device, self.st.step_times, self.st.cpu_times)
        self.first = self.st.step  # the step the log's values start at
        self.bar = tqdm(total=self.total, initial=self.st.step, desc=f"{cfg.arm}/seed{cfg.seed}",
                        disable=not progress or not dist.is_main, mininterval=5, leave=False)

    def seconds(self) -> float:
        """Pretraining wall seconds of every attempt: the earlier ones' (checkpointed) and this one's."""
        return self.st.seconds + wall_clock() - self.started

    def step(self) -> None:
        """One optimizer step on the next batch; its logged terms stay on the device."""
        cfg, st = self.cfg, self.st
        self.clock.step_started()
        set_lr(self.optimizer, self.lrs[st.step])
        at = to_device(st.stream.next(cfg.optim.batch_size, self.gen), self.labels.device)  # one copy, if any
        x, y = batch_images(self.images, at, self.device), to_device(self.labels[at], self.device)
        try:
            loss, terms = train_step(self.model, x, y, cfg, self.norm, self.gen, self.dist,
                                     st.step % cfg.pretrain.monitor_every == 0)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        except NonFiniteEmbeddingError as exc:  # only a non-finite embedding: a solver failure is retried
            self.read([0.0] * (len(SIGNALS) + 1))  # names an unread earlier step's non-finite loss first
            epoch, i = divmod(st.step, self.spe)
            raise DivergedError(f"loss is nan ({exc}) at epoch {epoch} step {i}") from None
        average_gradients(self.model)
        self.optimizer.step()
        self.log.add(terms)
        st.step += 1
        self.clock.step_done()
        self.bar.update(1)

    def read(self, flags: list[float]) -> list[float]:
        """Fold the logged terms into the epoch's sums, one at a time (the same sums however the
        steps were split between reads), stopping at a non-finite loss; the flags summed over ranks."""
        values, agreed = self.log.read(self.dist, flags)
        self.clock.read_done()
        for j, v in enumerate(values.get("loss", [])):
            if not math.isfinite(v):
                at = self.first + j
                raise DivergedError(f"loss is {v} at epoch {at // self.spe} step {at % self.spe}")
        for k, vals in values.items():
            for v in vals:
                self.st.sums[k] = self.st.sums.get(k, 0.0) + v
            self.st.counts[k] = self.st.counts.get(k, 0) + len(vals)
        self.first = self.st.step
        if values.get("loss"):
            self.bar.set_postfix(loss=f"{values['loss'][-1]:.3f}", refresh=False)
        return agreed

    def save(self) -> None:
        if self.dist.is_main:
            save_checkpoint(self.ckpt_path, checkpoint_state(self.model, self.optimizer, self.gen, self.st,
                                                             self.fingerprint, self.seconds()))
        self.periodic.reset()
        self.clock.pause()

    def boundary(self, signals: SignalCheckpoint) -> None:
        """After a step. The terms are read at fixed steps (the same on every rank: epoch ends,
        every ``runtime.log_every``); one process also reads when it must save. A signal noted at
        any point, the read included, is acted on here or at the next boundary (``settle``)."""
        st, alone = self.st, self.dist.world_size == 1
        mark, noted = signals.mark()
        wanted = noted + [float(self.periodic.due())]
        epoch_end = st.step % self.spe == 0
        if not (epoch_end or st.step % self.cfg.runtime.log_every == 0 or (alone and any(wanted))):
            return
        agreed = self.read(wanted)
        act = signals.settle(agreed[: len(SIGNALS)], mark, alone)
        if epoch_end:
            st.history.append({"epoch": st.step // self.spe, "lr": self.lrs[st.step - 1],
                               **{k: v / st.counts[k] for k, v in st.sums.items()}})
            st.sums, st.counts = {}, {}
        if epoch_end or act or agreed[-1] > 0:
            self.save()
        if act:
            signals.forward(act)


def pretrain(
    cfg: RunConfig, model: EmbeddingModel, train: Split, ckpt_path: Path,
    progress: bool = True, fingerprint: str = "", dist: DistInfo = SINGLE,
) -> dict[str, Any]:
    """Train ``model`` in place; returns {"history": [per-epoch means], "cost": {...},
    "resumed_at": [steps at which it was resumed from a checkpoint], "seconds": pretraining wall
    seconds of every attempt (the earlier ones up to their last checkpoint)}.

    Checkpoints are written atomically (see the module docstring) and resumed from if present.
    The logged terms are read every ``runtime.log_every`` steps and at epoch ends (embreg.steplog):
    a non-finite loss or embedding stops the run there (DivergedError), naming the first step it
    appeared at. An eigensolver that fails on a finite embedding is retried (embreg.terms.spectral)
    and, failing everywhere, raises RuntimeError: the run failed, it did not diverge.
    """
    loop = _Loop(cfg, model, train, ckpt_path, fingerprint, dist, progress)
    with SignalCheckpoint() as signals:
        while loop.st.step < loop.total:
            loop.step()
            loop.boundary(signals)
    loop.bar.close()
    if not bool(torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all()):  # the last update blew up
        raise DivergedError(f"weights are not finite after the last step ({loop.st.step})")
    st = loop.st
    return {"history": st.history, "cost": cost_summary(st.step_times, cfg.optim.batch_size, loop.device, loop.clock.cpu),
            "resumed_at": st.resumed_at, "seconds": loop.seconds()}
