"""Optimizers and the per-step learning-rate schedule (precomputed, as in DINO/VICReg)."""

from __future__ import annotations

import math

import torch
from torch import nn

from embreg.config import OptimConfig
from embreg.registry import Registry

OPTIMIZERS: Registry = Registry("optimizer")


class LARS(torch.optim.Optimizer):
    """LARS (You et al., 2017) as in the official VICReg code: SGD with momentum whose update
    for each weight matrix is scaled by eta * ||w|| / ||grad||. Parameter groups flagged
    ``lars_exclude`` (biases, norm layers) get neither weight decay nor the trust ratio."""

    def __init__(self, params, lr: float, weight_decay: float = 0.0, momentum: float = 0.9, eta: float = 0.001):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta, lars_exclude=False))

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        """One update of every group with ``torch._foreach_*`` kernels (a handful of launches per
        group, not several per tensor); momentum buffers are created once, at the first step."""
        for g in self.param_groups:
            params = [p for p in g["params"] if p.grad is not None]
            if not params:
                continue
            dps = [p.grad for p in params]
            if not g["lars_exclude"]:
                dps = torch._foreach_add(dps, params, alpha=g["weight_decay"])
                p_norm = torch.stack(torch._foreach_norm(params))
                d_norm = torch.stack(torch._foreach_norm(dps))
                q = torch.where((p_norm > 0) & (d_norm > 0), g["eta"] * p_norm / d_norm, torch.ones_like(p_norm))
                torch._foreach_mul_(dps, list(q.unbind()))
            for p in params:
                if "mu" not in self.state[p]:
                    self.state[p]["mu"] = torch.zeros_like(p)
            bufs = [self.state[p]["mu"] for p in params]
            torch._foreach_mul_(bufs, g["momentum"])
            torch._foreach_add_(bufs, dps)
            torch._foreach_add_(params, bufs, alpha=-g["lr"])


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Biases and norm parameters (1-d tensors) are excluded from weight decay."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0, "lars_exclude": True},
    ]


def _plain_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """param_groups without the LARS-only flag, for torch's own optimizers."""
    return [{k: v for k, v in g.items() if k != "lars_exclude"} for g in param_groups(model, weight_decay)]


@OPTIMIZERS.register("adamw")
def _adamw(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    # fused: one kernel for the whole update; 12-17% faster steps on the default profile's CPU
    # (the optimizer step went from ~85 to ~25 ms), the same updates to float rounding
    return torch.optim.AdamW(_plain_groups(model, cfg.weight_decay), lr=cfg.lr, fused=True)


@OPTIMIZERS.register("sgd")
def _sgd(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(_plain_groups(model, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum)


@OPTIMIZERS.register("lars")
def _lars(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    return LARS(param_groups(model, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum, eta=cfg.lars_eta)


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    return OPTIMIZERS.get(cfg.name)(model, cfg)


def cosine_schedule(base_lr: float, total_steps: int, warmup_steps: int = 0, final_frac: float = 0.001) -> list[float]:
    """Linear warm-up then cosine decay to ``final_frac * base_lr``, one value per step."""
    lrs = []
    for step in range(total_steps):
        if step < warmup_steps:
            lrs.append(base_lr * (step + 1) / warmup_steps)
            continue
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        lrs.append(base_lr * (final_frac + (1 - final_frac) * 0.5 * (1 + math.cos(math.pi * t))))
    return lrs


def set_lr(optimizer: torch.optim.Optimizer, lr: float, scales: list[float] | None = None) -> None:
    for i, g in enumerate(optimizer.param_groups):
        g["lr"] = lr * (scales[i] if scales else 1.0)
