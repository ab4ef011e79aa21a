"""Evaluation of a pretrained network: linear probe and kNN on frozen features, semi-supervised
fine-tuning on label subsets, and collapse metrics on the test embeddings.

Protocol (DESIGN.md): the last epoch is reported, never a best epoch chosen on test.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from embreg.config import EvalConfig
from embreg.data import AugmentSpec, Normalizer, Split, augment, batch_images
from embreg.metrics import collapse_metrics, row_singular_values, spectrum
from embreg.models import EmbeddingModel
from embreg.optim import cosine_schedule


@torch.no_grad()
def extract(
    model: EmbeddingModel, split: Split, norm: Normalizer, batch_size: int, taps: bool = False
) -> dict[str, torch.Tensor]:
    """Frozen features in eval mode: 'backbone' (n, f), 'projector' (n, d) and, with ``taps``,
    each stage's pooled output 'layer1'..'layer3' (layer4 is the backbone output)."""
    model.eval()
    device = next(model.parameters()).device
    chunks: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(split), batch_size):
        x = norm(split.images[start : start + batch_size].to(device))
        z, feats = model(x, taps=taps)
        out = {"backbone": feats.backbone, "projector": z}
        out.update({k: v for k, v in feats.taps.items() if k != "layer4"})
        for k, v in out.items():
            chunks.setdefault(k, []).append(v.float().cpu())
    return {k: torch.cat(v) for k, v in chunks.items()}


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Percent of samples whose label is among the top-k scores. logits (n, c), labels (n,)"""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices  # k >= classes: every label
    hit = top == labels[:, None]
    return {f"top{k}": 100.0 * float(hit[:, :k].any(dim=1).float().mean()) for k in ks}


def linear_probe(
    train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
    num_classes: int, cfg: EvalConfig, seed: int,
) -> dict[str, float]:
    """A linear classifier on cached frozen features (standardized with the training
    statistics, like a BatchNorm without affine), SGD m=0.9 + cosine, last epoch reported."""
    gen = torch.Generator().manual_seed(seed)
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    xtr, xte = (train_x - mean) / std, (test_x - mean) / std
    clf = nn.Linear(xtr.shape[1], num_classes)
    opt = torch.optim.SGD(clf.parameters(), lr=cfg.probe_lr, momentum=0.9, weight_decay=1e-6)
    steps_per_epoch = max(1, -(-len(xtr) // cfg.probe_batch_size))
    lrs = cosine_schedule(cfg.probe_lr, cfg.probe_epochs * steps_per_epoch)
    step = 0
    for _ in range(cfg.probe_epochs):
        perm = torch.randperm(len(xtr), generator=gen)
        for start in range(0, len(xtr), cfg.probe_batch_size):
            idx = perm[start : start + cfg.probe_batch_size]
            for g in opt.param_groups:
                g["lr"] = lrs[step]
            loss = F.cross_entropy(clf(xtr[idx]), train_y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
    with torch.no_grad():
        return topk_accuracy(clf(xte), test_y)


def linear_probe_augmented(
    model: EmbeddingModel, train: Split, test_x: torch.Tensor, test_y: torch.Tensor, norm: Normalizer,
    num_classes: int, cfg: EvalConfig, seed: int, bf16: bool = False, progress: bool = False,
) -> dict[str, float]:
    """The official VICReg linear evaluation: a linear head on the frozen backbone (eval mode),
    trained on random-resized-crop (0.08-1) + flip views every epoch, SGD m=0.9, wd 1e-6,
    cosine, last epoch reported on the test features ``test_x`` (centre view)."""
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    clf = nn.Linear(model.backbone.feat_dim, num_classes)
    nn.init.normal_(clf.weight, std=0.01, generator=gen)
    nn.init.zeros_(clf.bias)
    clf = clf.to(device)
    opt = torch.optim.SGD(clf.parameters(), lr=cfg.probe_lr, momentum=0.9, weight_decay=1e-6)
    spec = AugmentSpec(crop_scale=(0.08, 1.0), jitter_prob=0.0)
    bs = min(cfg.probe_batch_size, len(train))
    steps_per_epoch = max(1, len(train) // bs)
    lrs = cosine_schedule(cfg.probe_lr, cfg.probe_epochs * steps_per_epoch)
    model.eval()
    for step in tqdm(range(len(lrs)), desc="linear probe", disable=not progress, leave=False):
        if step % steps_per_epoch == 0:
            perm = torch.randperm(len(train), generator=gen)
        idx = perm[(step % steps_per_epoch) * bs : (step % steps_per_epoch + 1) * bs]
        x = augment(batch_images(train.images, idx, device), spec, norm, gen, jitter_on=False)
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            feats = model.backbone(model.prepare_input(x)).float()
        for g in opt.param_groups:
            g["lr"] = lrs[step]
        loss = F.cross_entropy(clf(feats), train.labels[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        return topk_accuracy(clf(test_x.to(device)).cpu(), test_y)


@torch.no_grad()
def knn_accuracy(
    train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
    num_classes: int, ks: list[int], temperature: float, chunk: int = 1024,
) -> dict[str, float]:
    """Weighted kNN (Wu et al., 2018): cosine similarity, votes weighted by exp(sim / T)."""
    bank = F.normalize(train_x, dim=1)
    kmax = min(max(ks), len(bank))
    correct = {k: 0 for k in ks}
    for start in range(0, len(test_x), chunk):
        q = F.normalize(test_x[start : start + chunk], dim=1)
        sim, idx = (q @ bank.T).topk(kmax, dim=1)
        weights = (sim / temperature).exp()
        neigh = train_y[idx]
        for k in ks:
            votes = torch.zeros(len(q), num_classes)
            kk = min(k, kmax)
            votes.scatter_add_(1, neigh[:, :kk], weights[:, :kk])
            correct[k] += int((votes.argmax(1) == test_y[start : start + chunk]).sum())
    return {f"knn{k}_top1": 100.0 * correct[k] / len(test_x) for k in ks}


def finetune(
    model: EmbeddingModel, train: Split, test: Split, norm: Normalizer, num_classes: int,
    epochs: float, lr_backbone: float, lr_head: float, batch_size: int, seed: int,
    progress: bool = False, desc: str = "finetune", crop_scale: tuple[float, float] = (0.5, 1.0),
) -> dict[str, float]:
    """Semi-supervised protocol: backbone + a new linear head trained end to end on a label
    subset (SGD m=0.9, cosine, wd 0, random-resized-crop + flip), top-1/top-5 on test."""
    device = next(model.parameters()).device
    net = copy.deepcopy(model.backbone)
    head = nn.Linear(net.feat_dim, num_classes).to(device)
    opt = torch.optim.SGD(
        [{"params": net.parameters(), "lr": lr_backbone}, {"params": head.parameters(), "lr": lr_head}],
        momentum=0.9, weight_decay=0.0,
    )
    gen = torch.Generator().manual_seed(seed)
    spec = AugmentSpec(crop_scale=crop_scale, jitter_prob=0.0)
    bs = min(batch_size, len(train))
    # epochs may be fractional (small profiles): the step budget is what is fixed
    total = max(1, round(epochs * len(train) / bs))
    scale = cosine_schedule(1.0, total)
    net.train()
    head.train()
    perm, pos = torch.randperm(len(train), generator=gen), 0
    for step in tqdm(range(total), desc=desc, disable=not progress, leave=False):
        if pos + bs > len(perm):
            perm, pos = torch.randperm(len(train), generator=gen), 0
        idx = perm[pos : pos + bs]
        pos += bs
        x = augment(batch_images(train.images, idx, device), spec, norm, gen, jitter_on=False)
        for g, base in zip(opt.param_groups, (lr_backbone, lr_head), strict=True):
            g["lr"] = base * scale[step]
        loss = F.cross_entropy(head(net(model.prepare_input(x))), train.labels[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    net.eval()
    logits = []
    with torch.no_grad():
        for start in range(0, len(test), 1024):
            x = norm(test.images[start : start + 1024].to(device))
            logits.append(head(net(model.prepare_input(x))).cpu())
    return topk_accuracy(torch.cat(logits), test.labels)


def collapse_report(feats: dict[str, torch.Tensor], k: int) -> tuple[dict, dict]:
    """Collapse metrics and leading singular values for every embedding extracted on test; one
    Gram eigendecomposition of the normalized rows serves both (and one of the raw rows RankMe)."""
    metrics, spectra = {}, {}
    for name, e in feats.items():
        rows = row_singular_values(e)
        metrics[name] = collapse_metrics(e, rows)
        spectra[name] = spectrum(e, k, rows)
    return metrics, spectra
