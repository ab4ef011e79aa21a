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

from embreg.config import RunConfig
from embreg.data import Normalizer, Split, load_split, load_unlabeled, read_index_file, subset_name
from embreg.distributed import DistInfo, barrier, init_from_env
from embreg.evaluate import (
    collapse_report,
    extract,
    finetune,
    knn_accuracy,
    linear_probe,
    linear_probe_augmented,
)
from embreg.io import code_hash, git_revision, read_json, write_json, write_text
from embreg.models import build_model
from embreg.pretrain import DivergedError, pretrain

DONE, FAILED, DIVERGED, RUNNING = "done", "failed", "diverged", "running"
INTERRUPTED = "interrupted"  # stopped by a signal (preempted, timed out, cancelled): resumes


def job_info() -> dict[str, str]:
    """The submitit job running this process, if any: its id (``123_4`` for an array task)
    and the path of its log, so a failed run can be traced to its scheduler job."""
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return {}
    import submitit

    env = submitit.JobEnvironment()
    if env.cluster != "slurm":
        return {"job_id": env.job_id, "log": str(env.paths.stdout)}
    # the job name is the sweep's (embreg.launch names every job of one sweep alike)
    return {"slurm_job_id": env.job_id, "log": str(env.paths.stdout), "sweep": os.environ.get("SLURM_JOB_NAME", "")}


def run_id(cfg: RunConfig) -> str:
    """The arm's name, plus ``@key=value`` for each swept key (coefficient sweeps)."""
    from omegaconf import OmegaConf

    tags = ""
    if cfg.tag_keys:
        node = OmegaConf.structured(cfg)
        tags = "".join(f"@{k.split('.')[-1]}={OmegaConf.select(node, k)}" for k in cfg.tag_keys)
    return cfg.arm + tags


def run_dir(cfg: RunConfig) -> Path:
    return Path(cfg.paths.results) / "runs" / run_id(cfg) / f"seed{cfg.seed}"


def checkpoint_path(cfg: RunConfig) -> Path:
    return Path(cfg.paths.checkpoints) / run_id(cfg) / f"seed{cfg.seed}" / "last.pt"


def read_status(rd: Path) -> dict[str, Any]:
    path = rd / "status.json"
    return read_json(path) if path.is_file() else {"state": "missing"}


def is_finished(cfg: RunConfig, fingerprint: str | None = None) -> bool:
    status = read_status(run_dir(cfg))
    fp = fingerprint or cfg.fingerprint(code_hash())
    return status.get("state") == DONE and status.get("fingerprint") == fp


def evaluate_model(cfg: RunConfig, model, train: Split, test: Split) -> tuple[dict, dict]:
    """All evaluations of DESIGN.md for one model. Returns (metrics, spectra)."""
    ev, ds = cfg.eval, cfg.dataset
    norm = Normalizer(ds.mean, ds.std)
    probe = train
    if ev.probe_train_size and ev.probe_train_size < len(train):
        # the same probe subset for every run (fixed seed), so arms are compared on equal data
        probe = train.subset(torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[: ev.probe_train_size])
    ftr = extract(model, probe, norm, ev.feature_batch_size)
    fte = extract(model, test, norm, ev.feature_batch_size, taps=True)
    out: dict[str, Any] = {}
    if ev.probe_augment:  # the official protocol: augmented views through the frozen backbone
        lin = linear_probe_augmented(model, probe, fte["backbone"], test.labels, norm, ds.num_classes, ev,
                                     cfg.seed, cfg.pretrain.precision == "bf16", cfg.runtime.progress)
    else:
        lin = linear_probe(ftr["backbone"], probe.labels, fte["backbone"], test.labels, ds.num_classes, ev, cfg.seed)
    out.update({f"linear_{k}": v for k, v in lin.items()})
    out.update(knn_accuracy(ftr["backbone"], probe.labels, fte["backbone"], test.labels,
                            ds.num_classes, list(ev.knn_k), ev.knn_temperature))
    collapse, spectra = collapse_report(fte, ev.spectrum_size)
    out["collapse"] = collapse
    # fine-tuning a random init is the supervised baseline's from-scratch column: not repeated
    if ev.semi_supervised and cfg.objective.kind != "none":
        start = model
        if cfg.objective.kind == "supervised":  # the supervised baseline trains from scratch on the subset
            torch.manual_seed(cfg.seed)
            start = build_model(cfg.backbone, ds.in_channels, ds.num_classes)
        root = Path(cfg.paths.data) / ds.name / "subsets"
        for i, frac in enumerate(ds.subset_fractions):
            name = subset_name(frac)
            sub = train.subset(read_index_file(root / f"{name}.txt"))
            res = finetune(start, sub, test, norm, ds.num_classes, ev.finetune_epochs[i],
                           ev.finetune_lr_backbone[i], ev.finetune_lr_head[i],
                           ev.finetune_batch_size, cfg.seed, cfg.runtime.progress, desc=name,
                           crop_scale=tuple(ev.finetune_crop_scale))
            key = name.replace("train_", "semi_")
            out.update({f"{key}_{k}": v for k, v in res.items()})
    return out, spectra


def run_one(cfg: RunConfig) -> dict[str, Any]:
    """Train and evaluate one run; returns its status dict (never raises on a training error).

    With several processes (a multi-task SLURM job) every rank trains; rank 0 alone evaluates
    and writes the run directory."""
    fp = cfg.fingerprint(code_hash())
    rd = run_dir(cfg)
    if is_finished(cfg, fp):
        return read_status(rd)
    dist = init_from_env(torch.device(cfg.profile.device).type)
    if not dist.is_main:
        _train_and_evaluate(cfg, rd, fp, dist)
        return {"run_id": run_id(cfg), "seed": cfg.seed, "state": DONE, "rank": dist.rank}
    rd.mkdir(parents=True, exist_ok=True)
    for stale in ("metrics.json", "error.txt"):
        (rd / stale).unlink(missing_ok=True)
    meta = {"run_id": run_id(cfg), "arm": cfg.arm, "seed": cfg.seed, "fingerprint": fp,
            "git_revision": git_revision(), "host": socket.gethostname(), "pid": os.getpid(),
            "world_size": dist.world_size, **job_info()}
    write_text(rd / "config.yaml", yaml.safe_dump(asdict(cfg), sort_keys=False))
    write_json(rd / "status.json", {**meta, "state": RUNNING, "started": time.time()})
    t0 = time.time()
    try:
        cfg.validate()  # a bad config is this run's failure, recorded like any other
        metrics = _train_and_evaluate(cfg, rd, fp, dist)
        state, error = DONE, None
    except DivergedError as exc:
        state, error, metrics = DIVERGED, str(exc), {}
    except Exception as exc:  # noqa: BLE001 - recorded in the run directory, reported by the sweep
        state, error, metrics = FAILED, f"{type(exc).__name__}: {exc}", {}
        write_text(rd / "error.txt", traceback.format_exc())
    except BaseException as exc:  # a signal's exit (requeue) or Ctrl-C: resumable, then re-raised
        write_json(rd / "status.json", {**meta, "state": INTERRUPTED, "error": type(exc).__name__,
                                         "seconds": time.time() - t0})
        raise
    status = {**meta, "state": state, "error": error, "seconds": time.time() - t0}
    if state == DONE:
        write_json(rd / "metrics.json", {**meta, **metrics})
    write_json(rd / "status.json", status)
    return status


def pretraining_split(cfg: RunConfig, train: Split) -> Split:
    """What the arm pretrains on: the labelled train split, plus the unlabeled images (label -1)
    for self-supervised arms when ``dataset.pretrain_unlabeled``."""
    if not (cfg.dataset.pretrain_unlabeled and cfg.objective.kind == "ssl"):
        return train
    extra = load_unlabeled(cfg.paths.data, cfg.dataset.name)
    return Split(images=torch.cat([train.images, extra]),
                 labels=torch.cat([train.labels, torch.full((len(extra),), -1, dtype=torch.long)]))


def _train_and_evaluate(cfg: RunConfig, rd: Path, fp: str, dist: DistInfo) -> dict[str, Any]:
    if cfg.runtime.threads > 0:
        torch.set_num_threads(cfg.runtime.threads)
    device = torch.device(cfg.profile.device)
    if device.type == "cuda" and dist.world_size > 1:
        device = torch.device("cuda", torch.cuda.current_device())  # set by init_from_env
    ds = cfg.dataset
    train = load_split(cfg.paths.data, ds.name, train=True, image_size=ds.image_size)
    test = load_split(cfg.paths.data, ds.name, train=False, image_size=ds.image_size)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.backbone, ds.in_channels, ds.num_classes).to(device)
    if device.type == "cuda" and dist.world_size > 1:  # BN statistics over the global batch
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ckpt = checkpoint_path(cfg)
    if dist.is_main and ckpt.is_file() and torch.load(ckpt, map_location="cpu", weights_only=False).get("fingerprint") != fp:
        ckpt.unlink()  # trained under another config or code: never resume from it
    barrier()
    metrics: dict[str, Any] = {}
    t0 = time.time()
    if cfg.objective.kind != "none":
        result = pretrain(cfg, model, pretraining_split(cfg, train), ckpt, cfg.runtime.progress, fingerprint=fp,
                          dist=dist)
        if not dist.is_main:  # rank 0 evaluates
            return {}
        write_json(rd / "history.json", result["history"])
        metrics.update(result["cost"], resumed_at_steps=result["resumed_at"])
    if not dist.is_main:
        return {}
    metrics["pretrain_seconds"] = time.time() - t0
    t1 = time.time()
    evals, spectra = evaluate_model(cfg, model, train, test)
    metrics.update(evals)
    metrics["eval_seconds"] = time.time() - t1
    write_json(rd / "spectra.json", spectra)
    return metrics
