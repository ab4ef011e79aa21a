"""Evaluation of a pretrained network: linear probe and kNN on frozen features, semi-supervised
fine-tuning on label subsets, and collapse metrics on the test embeddings (``evaluate_model``
runs them all for one run).

Protocol (as in VICReg, Bardes et al. 2022, Appendix C): the last epoch is reported, never a
best epoch chosen on test. The probe, the augmented probe and fine-tuning share one SGD loop
(``train_head``): per-step learning rates through ``optim.set_lr``, batches from a seeded
``IndexStream``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from embreg.config import EvalConfig, RunConfig
from embreg.data import (
    AugmentSpec,
    IndexStream,
    Normalizer,
    Split,
    augment,
    batch_images,
    read_index_file,
    subset_name,
)
from embreg.data.augment import to_device
from embreg.metrics import collapse_report, retrieval
from embreg.models import EmbeddingModel, build_model
from embreg.optim import cosine_schedule, set_lr


@torch.no_grad()
def extract(
    model: EmbeddingModel, split: Split, norm: Normalizer, batch_size: int, taps: bool = False
) -> dict[str, torch.Tensor]:
    """Frozen features in eval mode, float32 on the model's device (evaluation stays there):
    'backbone' (n, f), 'projector' (n, d) and, with ``taps``, each stage's pooled output
    'layer1'..'layer3' (layer4 is the backbone output)."""
    model.eval()
    device = next(model.parameters()).device
    chunks: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(split), batch_size):
        x = norm(to_device(split.images[start : start + batch_size], device))
        z, feats = model(x, taps=taps)
        out = {"backbone": feats.backbone, "projector": z}
        out.update({k: v for k, v in feats.taps.items() if k != "layer4"})
        for k, v in out.items():
            chunks.setdefault(k, []).append(v.float())
    return {k: torch.cat(v) for k, v in chunks.items()}


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Percent of samples whose label is among the top-k scores. logits (n, c), labels (n,)"""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices  # k >= classes: every label
    hit = top == labels[:, None]
    return {f"top{k}": 100.0 * float(hit[:, :k].any(dim=1).float().mean()) for k in ks}


def train_head(
    opt: torch.optim.Optimizer, lrs: list[float], stream: IndexStream, batch_size: int, gen: torch.Generator,
    loss_of: Callable[[torch.Tensor], torch.Tensor], scales: list[float] | None = None,
    progress: bool = False, desc: str = "", device: torch.device | None = None,
) -> None:
    """The one SGD loop of the evaluations: ``len(lrs)`` steps, each on the next batch of
    ``stream`` (indices drawn from ``gen``; on ``device`` when given), at learning rate
    ``lrs[step]`` (times each param group's ``scales``). ``loss_of(idx)`` builds the batch
    (drawing any augmentation from ``gen`` after the indices) and returns its loss."""
    for step in tqdm(range(len(lrs)), desc=desc, disable=not progress, leave=False):
        idx = stream.next(batch_size, gen)
        loss = loss_of(idx if device is None else to_device(idx, device))
        set_lr(opt, lrs[step], scales)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def linear_head(in_dim: int, num_classes: int, gen: torch.Generator) -> nn.Linear:
    """The probe's head, drawn from the probe's own generator (VICReg's init: N(0, 0.01), zero
    bias), so a probe's result depends on its seed only, never on what ran before it."""
    clf = nn.Linear(in_dim, num_classes)
    nn.init.normal_(clf.weight, std=0.01, generator=gen)
    nn.init.zeros_(clf.bias)
    return clf


def linear_probe(
    train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
    num_classes: int, cfg: EvalConfig, seed: int,
) -> dict[str, float]:
    """A linear classifier on cached frozen features (standardized with the training
    statistics, like a BatchNorm without affine), SGD m=0.9 + cosine, last epoch reported; on
    the features' device (the indices and the head's initial weights are drawn on the CPU)."""
    gen = torch.Generator().manual_seed(seed)
    device = train_x.device
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    xtr, xte = (train_x - mean) / std, (test_x.to(device) - mean) / std
    ytr = train_y.to(device)
    clf = linear_head(xtr.shape[1], num_classes, gen).to(device)
    opt = torch.optim.SGD(clf.parameters(), lr=cfg.probe_lr, momentum=0.9, weight_decay=1e-6)
    steps_per_epoch = max(1, -(-len(xtr) // cfg.probe_batch_size))  # the last batch may be smaller
    lrs = cosine_schedule(cfg.probe_lr, cfg.probe_epochs * steps_per_epoch)
    train_head(opt, lrs, IndexStream(len(xtr), partial=True), cfg.probe_batch_size, gen,
               lambda idx: F.cross_entropy(clf(xtr[idx]), ytr[idx]), device=device)
    with torch.no_grad():
        return topk_accuracy(clf(xte), test_y.to(device))


def linear_probe_augmented(
    model: EmbeddingModel, train: Split, test_x: torch.Tensor, test_y: torch.Tensor, norm: Normalizer,
    num_classes: int, cfg: EvalConfig, seed: int, bf16: bool = False, progress: bool = False,
) -> dict[str, float]:
    """The official VICReg linear evaluation: a linear head on the frozen backbone (eval mode),
    trained on random-resized-crop (0.08-1) + flip views every epoch, SGD m=0.9, wd 1e-6,
    cosine, last epoch reported on the test features ``test_x`` (centre view)."""
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    clf = linear_head(model.backbone.feat_dim, num_classes, gen).to(device)
    opt = torch.optim.SGD(clf.parameters(), lr=cfg.probe_lr, momentum=0.9, weight_decay=1e-6)
    spec = AugmentSpec(crop_scale=(0.08, 1.0), jitter_prob=0.0)
    bs = min(cfg.probe_batch_size, len(train))
    steps_per_epoch = max(1, len(train) // bs)  # full batches only
    lrs = cosine_schedule(cfg.probe_lr, cfg.probe_epochs * steps_per_epoch)
    model.eval()

    def loss_of(idx: torch.Tensor) -> torch.Tensor:
        x = augment(batch_images(train.images, idx, device), spec, norm, gen, jitter_on=False)
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            feats = model.backbone(model.prepare_input(x)).float()
        return F.cross_entropy(clf(feats), to_device(train.labels[idx], device))

    train_head(opt, lrs, IndexStream(len(train)), bs, gen, loss_of, progress=progress, desc="linear probe")
    with torch.no_grad():
        return topk_accuracy(clf(test_x.to(device)), test_y.to(device))


@torch.no_grad()
def knn_accuracy(
    train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
    num_classes: int, ks: list[int], temperature: float, chunk: int = 1024,
) -> dict[str, float]:
    """Weighted kNN (Wu et al., 2018): cosine similarity, votes weighted by exp(sim / T); on the
    bank's device, read once at the end."""
    device = train_x.device
    bank = F.normalize(train_x, dim=1)
    train_y, test_x, test_y = train_y.to(device), test_x.to(device), test_y.to(device)
    kmax = min(max(ks), len(bank))
    correct = torch.zeros(len(ks), dtype=torch.long, device=device)
    for start in range(0, len(test_x), chunk):
        q = F.normalize(test_x[start : start + chunk], dim=1)
        sim, idx = (q @ bank.T).topk(kmax, dim=1)
        weights = (sim / temperature).exp()
        neigh = train_y[idx]
        for i, k in enumerate(ks):
            votes = torch.zeros(len(q), num_classes, device=device)
            kk = min(k, kmax)
            votes.scatter_add_(1, neigh[:, :kk], weights[:, :kk])
            correct[i] += (votes.argmax(1) == test_y[start : start + chunk]).sum()
    return {f"knn{k}_top1": 100.0 * c / len(test_x) for k, c in zip(ks, correct.tolist(), strict=True)}


def finetune(
    model: EmbeddingModel, train: Split, test: Split, norm: Normalizer, num_classes: int,
    epochs: float, lr_backbone: float, lr_head: float, batch_size: int, seed: int,
    progress: bool = False, desc: str = "finetune", crop_scale: tuple[float, float] = (0.5, 1.0),
) -> dict[str, float]:
    """Semi-supervised protocol: backbone + a new linear head trained end to end on a label
    subset (SGD m=0.9, cosine, wd 0, random-resized-crop + flip), top-1/top-5 on test."""
    device = next(model.parameters()).device
    net = local_batchnorm(copy.deepcopy(model.backbone))
    gen = torch.Generator().manual_seed(seed)
    head = linear_head(net.feat_dim, num_classes, gen).to(device)
    opt = torch.optim.SGD(
        [{"params": net.parameters(), "lr": lr_backbone}, {"params": head.parameters(), "lr": lr_head}],
        momentum=0.9, weight_decay=0.0,
    )
    spec = AugmentSpec(crop_scale=crop_scale, jitter_prob=0.0)
    bs = min(batch_size, len(train))
    # epochs may be fractional (small profiles): the step budget is what is fixed
    total = max(1, round(epochs * len(train) / bs))
    scale = cosine_schedule(1.0, total)
    net.train()
    head.train()

    def loss_of(idx: torch.Tensor) -> torch.Tensor:
        x = augment(batch_images(train.images, idx, device), spec, norm, gen, jitter_on=False)
        return F.cross_entropy(head(net(model.prepare_input(x))), to_device(train.labels[idx], device))

    train_head(opt, scale, IndexStream(len(train)), bs, gen, loss_of, scales=[lr_backbone, lr_head],
               progress=progress, desc=desc)
    net.eval()
    logits = []
    with torch.no_grad():
        for start in range(0, len(test), 1024):
            x = norm(to_device(test.images[start : start + 1024], device))
            logits.append(head(net(model.prepare_input(x))))
    return topk_accuracy(torch.cat(logits), test.labels.to(device))


def local_batchnorm(module: nn.Module) -> nn.Module:
    """``module`` with every SyncBatchNorm replaced by a BatchNorm2d holding the same weights and
    statistics (in place; returned). Evaluation runs on rank 0 alone: a SyncBatchNorm in training
    mode (fine-tuning) would wait for ranks that are not there."""
    for name, child in module.named_children():
        if isinstance(child, nn.SyncBatchNorm):
            tensors = [*child.parameters(), *child.buffers()]
            bn = nn.BatchNorm2d(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            bn = bn.to(tensors[0].device if tensors else "cpu")
            bn.load_state_dict(child.state_dict())
            bn.train(child.training)
            setattr(module, name, bn)
        else:
            local_batchnorm(child)
    return module


def evaluate_pixels(cfg: RunConfig, train: Split, test: Split, device: torch.device | None = None) -> dict[str, Any]:
    """The raw-pixel reference: the same linear probe (same probe subset, standardized
    features) and kNN as every arm, on the flattened standardized pixels (n, c*h*w), on
    ``device`` (default: the run's, ``profile.device``) as every arm's evaluation is."""
    ev, ds = cfg.eval, cfg.dataset
    if not isinstance(train.images, torch.Tensor):
        raise ValueError(f"the pixels reference needs the images in memory; dataset {ds.name!r} streams them "
                         "(leave pixels out of profile.baselines)")
    device = torch.device(cfg.profile.device) if device is None else device
    norm = Normalizer(ds.mean, ds.std)
    probe = probe_subset(train, ev.probe_train_size)
    xtr, xte = (norm(to_device(s.images, device)).flatten(1).float() for s in (probe, test))
    out = {f"linear_{k}": v for k, v in
           linear_probe(xtr, probe.labels, xte, test.labels, ds.num_classes, ev, cfg.seed).items()}
    out.update(knn_accuracy(xtr, probe.labels, xte, test.labels, ds.num_classes, list(ev.knn_k), ev.knn_temperature))
    out.update(retrieval({"pixels": xte}, test.labels, ds.num_classes))
    return out


def probe_subset(train: Split, size: int | None) -> Split:
    """The probe's training images: a fixed subset (seed 0) of ``size`` images, the same for
    every run so that arms are compared on equal data; all of them when ``size`` is None."""
    if not size or size >= len(train):
        return train
    return train.subset(torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:size])


def finetune_lr_scale(ev: EvalConfig) -> float:
    """The papers' semi-supervised learning rates are for batch ``finetune_lr_batch`` (256);
    scaled linearly to the batch actually used (Goyal et al., 2017)."""
    return ev.finetune_batch_size / ev.finetune_lr_batch


def evaluate_model(cfg: RunConfig, model: EmbeddingModel, train: Split, test: Split) -> tuple[dict, dict]:
    """Every evaluation of one pretrained model: linear probe, kNN, collapse metrics and (unless
    the arm is untrained) fine-tuning on each label fraction. Returns (metrics, spectra)."""
    ev, ds = cfg.eval, cfg.dataset
    norm = Normalizer(ds.mean, ds.std)
    probe = probe_subset(train, ev.probe_train_size)
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
    out.update(retrieval(fte, test.labels, ds.num_classes))
    collapse, spectra = collapse_report(fte, ev.spectrum_size)
    out["collapse"] = collapse
    # fine-tuning a random init is the supervised baseline's from-scratch column: not repeated
    if ev.semi_supervised and cfg.objective.kind != "untrained":
        start = model
        if cfg.objective.kind == "supervised":  # the supervised baseline trains from scratch on the subset
            torch.manual_seed(cfg.seed)
            start = build_model(cfg.backbone, ds.in_channels, ds.num_classes).to(next(model.parameters()).device)
        root = Path(cfg.paths.data) / ds.name / "subsets"
        for i, frac in enumerate(ds.subset_fractions):
            name = subset_name(frac)
            sub = train.subset(read_index_file(root / f"{name}.txt"))
            scale = finetune_lr_scale(ev)
            res = finetune(start, sub, test, norm, ds.num_classes, ev.finetune_epochs[i],
                           ev.finetune_lr_backbone[i] * scale, ev.finetune_lr_head[i] * scale,
                           ev.finetune_batch_size, cfg.seed, cfg.runtime.progress, desc=name,
                           crop_scale=tuple(ev.finetune_crop_scale))
            key = name.replace("train_", "semi_")
            out.update({f"{key}_{k}": v for k, v in res.items()})
    return out, spectra
