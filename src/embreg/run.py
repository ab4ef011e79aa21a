"""One run (an arm x a seed): pretrain, evaluate, and write everything into its run directory.

``run_one`` is what the Hydra task calls and what tests call directly. A finished run whose
config and code fingerprint still match is not retrained; a failed or diverged run records its
status and error instead of raising, so one bad arm never stops a sweep.
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import yaml

from embreg import checks
from embreg.attempt import RunLock, finite, publish, work_dir
from embreg.config import TRAINED_KINDS, RunConfig
from embreg.data import Split, class_indices, class_split, load_split, load_unlabeled
from embreg.distributed import DistInfo, barrier, batch_problem, process_group
from embreg.evaluate import evaluate_model, evaluate_pixels, probe_subset
from embreg.fingerprint import fingerprint_of, fingerprint_parts
from embreg.io import available_cores, git_revision, write_json, write_text
from embreg.models import build_model
from embreg.pretrain import DivergedError, pretrain, read_checkpoint
from embreg.provenance import machine
from embreg.rundir import (
    State,
    checkpoint_path,
    is_finished,
    lock_path,
    read_status,
    run_dir,
    run_id,
    write_status,
)


def job_info() -> dict[str, str]:
    """The submitit job running this process, if any: its id (``123_4`` for an array task)
    and the path of its log, so a failed run can be traced to its scheduler job."""
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return {}
    import submitit

    env = submitit.JobEnvironment()
    if env.cluster != "slurm":
        return {"job_id": env.job_id, "log": str(env.paths.stdout)}
    # the job name is the sweep's (embreg.sweep.launch names every job of one sweep alike)
    return {"slurm_job_id": env.job_id, "log": str(env.paths.stdout), "sweep": os.environ.get("SLURM_JOB_NAME", "")}


def validate(cfg: RunConfig) -> None:
    """Every rule the config breaks, at once (embreg.checks: names, ranges, finite numbers,
    cross-field rules, writable paths); reads no data. ``run_one`` adds the data-aware rule
    (a batch that fits the prepared training split)."""
    checks.validate(cfg, with_data=False)


def run_one(cfg: RunConfig) -> dict[str, Any]:
    """Train and evaluate one run; returns its status dict (a training error is recorded, not raised).

    Raises ConfigError (or DataUnavailableError, UnknownNameError) for a config that must not
    run and RunLockedError when another process trains this run, before anything is written.
    With several processes (a multi-task SLURM job) every rank trains; rank 0 alone evaluates
    and writes the run directory."""
    checks.validate(cfg, with_data=False)  # a bad config is refused even where a result sits
    parts = fingerprint_parts(cfg)
    fp, rd = fingerprint_of(parts), run_dir(cfg)
    if is_finished(cfg, fp):
        return read_status(rd)
    checks.validate(cfg)  # every problem at once, data-aware too, before anything is written or deleted
    if not cfg.runtime.replace:
        refuse_other_config(rd, parts["config"])
    with process_group(torch.device(cfg.profile.device).type) as dist:
        if cfg.objective.kind in TRAINED_KINDS and (problem := batch_problem(cfg.optim.batch_size, dist.world_size)):
            raise checks.ConfigError(problem)  # every rank alike, before anything is written
        if not dist.is_main:
            _train_and_evaluate(cfg, rd, fp, dist)
            return {"run_id": run_id(cfg), "seed": cfg.seed, "state": State.DONE.value, "rank": dist.rank}
        with RunLock(lock_path(cfg), f"run {run_id(cfg)} seed{cfg.seed}"):
            if is_finished(cfg, fp):  # another process finished it while this one waited
                return read_status(rd)
            return _attempt(cfg, rd, parts, dist)


def refuse_other_config(rd: Path, config: str) -> None:
    """A run by hand never replaces a finished run of another config: ConfigError, one line."""
    status = read_status(rd)
    recorded = (status.get("fingerprint_parts") or {}).get("config")
    if status.get("state") == State.DONE.value and recorded not in (None, config):
        raise checks.ConfigError(
            f"{rd} holds a finished run of another config; tag_keys=[<key>,...] or paths.results=<dir> gives "
            "this one a place of its own, runtime.replace=true replaces it")


def _attempt(cfg: RunConfig, rd: Path, parts: dict[str, str], dist: DistInfo) -> dict[str, Any]:
    """One attempt, under the run's lock. It works in ``rd``, or beside it while ``rd`` holds a
    result, which is then replaced only by a finished one (embreg.attempt)."""
    fp = fingerprint_of(parts)
    wd = work_dir(rd)
    wd.mkdir(parents=True, exist_ok=True)
    for stale in ("metrics.json", "error.txt"):
        (wd / stale).unlink(missing_ok=True)
    meta = {"run_id": run_id(cfg), "arm": cfg.arm, "seed": cfg.seed, "fingerprint": fp, "fingerprint_parts": parts,
            "git_revision": git_revision(), "host": socket.gethostname(), "pid": os.getpid(),
            "world_size": dist.world_size, **job_info(),
            "machine": machine(cfg.profile.device, cpu_share(cfg.runtime.threads))}
    write_text(wd / "config.yaml", yaml.safe_dump(asdict(cfg), sort_keys=False))
    write_status(wd, {**meta, "state": State.RUNNING, "started": time.time()})
    t0 = time.time()
    try:
        metrics = _train_and_evaluate(cfg, wd, fp, dist)
        state, error = State.DONE, None
    except DivergedError as exc:
        state, error, metrics = State.DIVERGED, str(exc), {}
    except Exception as exc:  # noqa: BLE001 - recorded in the run directory, reported by the sweep
        state, error, metrics = State.FAILED, f"{type(exc).__name__}: {exc}", {}
        write_text(wd / "error.txt", traceback.format_exc())
    except BaseException as exc:  # a signal's exit (requeue) or Ctrl-C: resumable, then re-raised
        write_status(wd, {**meta, "state": State.INTERRUPTED, "error": type(exc).__name__,
                          "seconds": time.time() - t0})
        raise
    status = {**meta, "state": state.value, "error": error, "seconds": time.time() - t0, "started": t0,
              "ended": time.time()}
    if state == State.DONE:
        clean, why = finite({**meta, **metrics})  # JSON has no NaN: null, and the reason
        write_json(wd / "metrics.json", {**clean, **({"null_reasons": why} if why else {})})
    write_status(wd, status)
    if state == State.DONE:
        publish(wd, rd)
    return status


def pretraining_split(cfg: RunConfig, train: Split) -> Split:
    """What the arm pretrains on: the labelled train split, plus the unlabeled images (label -1)
    for self-supervised arms when ``dataset.pretrain_unlabeled``; for the metric-learning arms,
    the train images of the first half of the classes only (``class_split``)."""
    if cfg.objective.kind == "metric":
        seen, _ = class_split(cfg.dataset.num_classes)
        return train.subset(class_indices(train.labels, seen))
    if not (cfg.dataset.pretrain_unlabeled and cfg.objective.kind == "ssl"):
        return train
    extra = load_unlabeled(cfg.paths.data, cfg.dataset.name)
    return Split(images=torch.cat([train.images, extra]),
                 labels=torch.cat([train.labels, torch.full((len(extra),), -1, dtype=torch.long)]))


def cpu_share(threads: int = 0) -> int:
    """The torch threads of a run: ``threads`` when set (the launcher's share of the cores:
    local.threads_per_job, slurm.cpus_per_task), else the cores this process may run on (its
    affinity: what SLURM or taskset gave it), never every core of a machine it shares."""
    return threads if threads > 0 else available_cores()


def _train_and_evaluate(cfg: RunConfig, rd: Path, fp: str, dist: DistInfo) -> dict[str, Any]:
    torch.set_num_threads(cpu_share(cfg.runtime.threads))
    device = torch.device(cfg.profile.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes every step: pick each convolution's fastest kernel
    if device.type == "cuda" and dist.world_size > 1:
        device = torch.device("cuda", torch.cuda.current_device())  # set by init_from_env
    ds = cfg.dataset
    train = load_split(cfg.paths.data, ds.name, train=True, image_size=ds.image_size)
    test = probe_subset(load_split(cfg.paths.data, ds.name, train=False, image_size=ds.image_size), cfg.eval.test_size)
    if cfg.objective.kind == "pixels":  # a reference without a network, evaluated on the run's device
        t1 = time.time()
        return {**evaluate_pixels(cfg, train, test, device), "eval_seconds": time.time() - t1}
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.backbone, ds.in_channels, ds.num_classes, cfg.objective).to(device)
    if device.type == "cuda" and dist.world_size > 1:  # BN statistics over the global batch
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ckpt = checkpoint_path(cfg)
    if dist.is_main:  # an unreadable checkpoint is set aside here (read_checkpoint)
        state = read_checkpoint(ckpt)
        if state is not None and state.get("fingerprint") != fp:
            ckpt.unlink()  # trained under another config or code: never resume from it
        del state  # not kept in memory while training
    barrier()
    metrics: dict[str, Any] = {}
    t0 = time.time()
    if cfg.objective.kind != "untrained":
        result = pretrain(cfg, model, pretraining_split(cfg, train), ckpt, cfg.runtime.progress, fingerprint=fp,
                          dist=dist)
        if not dist.is_main:  # rank 0 evaluates
            return {}
        write_json(rd / "history.json", finite(result["history"])[0])
        # every attempt's seconds (the checkpoint carries the earlier ones'), as its cost carries every step
        metrics.update(result["cost"], resumed_at_steps=result["resumed_at"], pretrain_seconds=result["seconds"])
    if not dist.is_main:
        return {}
    metrics.setdefault("pretrain_seconds", time.time() - t0)  # an untrained arm: nothing to pretrain
    t1 = time.time()
    evals, spectra = evaluate_model(cfg, model, train, test)
    metrics.update(evals)
    metrics["eval_seconds"] = time.time() - t1
    write_json(rd / "spectra.json", finite(spectra)[0])
    return metrics
