"""Process-group helpers. Losses call ``gather_with_grad``; on one process it is the identity,
so CPU tests run the same code path as multi-GPU training."""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _FullGather(torch.autograd.Function):
    """all_gather whose backward sums the incoming gradients across ranks and hands each
    rank the slice that belongs to its own input (the official VICReg FullGatherLayer)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> tuple[torch.Tensor, ...]:  # type: ignore[override]
        out = [torch.zeros_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x.contiguous())
        return tuple(out)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        all_grads = torch.stack(grads)
        dist.all_reduce(all_grads)
        return all_grads[dist.get_rank()]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """(b_local, d) -> (b_local * world, d), differentiable; identity without a process group."""
    if not is_distributed():
        return x
    return torch.cat(_FullGather.apply(x), dim=0)
