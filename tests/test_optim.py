"""LARS against a per-tensor reference (the official VICReg code's update, written out here)."""

from __future__ import annotations

import torch
from torch import nn

from embreg.config import OptimConfig
from embreg.optim import build_optimizer, param_groups


@torch.no_grad()
def reference_lars_step(params: list[dict], state: dict, lr: float, momentum: float, eta: float) -> None:
    """facebookresearch/vicreg's LARS.step, one tensor at a time."""
    for g in params:
        for p in g["params"]:
            if p.grad is None:
                continue
            dp = p.grad
            if not g.get("lars_exclude", False):
                dp = dp.add(p, alpha=g["weight_decay"])
                p_norm, d_norm = torch.norm(p), torch.norm(dp)
                q = torch.where((p_norm > 0) & (d_norm > 0), eta * p_norm / d_norm, torch.ones_like(p_norm))
                dp = dp.mul(q)
            buf = state.setdefault(p, torch.zeros_like(p))
            buf.mul_(momentum).add_(dp)
            p.add_(buf, alpha=-lr)


def test_lars_matches_the_per_tensor_update() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.Linear(5, 3))
    ref = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.Linear(5, 3))
    ref.load_state_dict(net.state_dict())
    with torch.no_grad():
        net[2].weight.zero_()  # a zero weight: trust ratio 1
        ref[2].weight.zero_()
    cfg = OptimConfig(name="lars", lr=0.3, weight_decay=1e-4, momentum=0.9, lars_eta=0.02)
    opt = build_optimizer(net, cfg)
    ref_groups, ref_state = param_groups(ref, cfg.weight_decay), {}
    x = torch.randn(16, 6)
    for step in range(4):
        for m in (net, ref):
            m.zero_grad(set_to_none=True)
            m(x).pow(2).mean().backward()
            if step == 2:  # a parameter without a gradient this step is left alone
                m[0].bias.grad = None
        opt.step()
        reference_lars_step(ref_groups, ref_state, cfg.lr, cfg.momentum, cfg.lars_eta)
        for (name, a), b in zip(net.named_parameters(), ref.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=f"step {step}: {name}")
    assert all("mu" in opt.state[p] for p in net.parameters())
