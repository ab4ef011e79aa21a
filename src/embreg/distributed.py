"""Process-group helpers for data-parallel (DDP) training.

A run uses several tasks by starting one process per task, each with its own slice of the
global batch: under SLURM through submitit (``tasks_per_node > 1``; submitit's
``TorchDistributedEnvironment`` turns SLURM's task variables into torch's ``env://``
variables) or under ``torchrun`` (which sets ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``).
``init_from_env`` joins the process group: NCCL on GPU (one device per task, picked by the
local rank), gloo on CPU; ``process_group`` joins it for one run and destroys it at the end. Parameter gradients are averaged over ranks after the backward pass,
by ``DistributedDataParallel`` or by ``average_gradients`` for a model not wrapped in it.

Losses call ``gather_with_grad``: the variance, covariance and SVMax terms see the whole global
batch, and its backward sums the gradients over ranks, so after DDP's averaging the gradients
equal a single process's on the whole batch. On one process it is the identity, so CPU tests
run the same code path as multi-GPU training.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as tdist  # `dist` is a DistInfo everywhere else


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job; the defaults are a single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, metrics and logs."""
        return self.rank == 0


def is_distributed() -> bool:
    return tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1


def _group_info() -> DistInfo:
    rank = tdist.get_rank()
    return DistInfo(rank, tdist.get_world_size(), int(os.environ.get("LOCAL_RANK", rank)))


def _submitit_num_tasks() -> int:
    """Number of tasks of the submitit job this process runs in; 0 outside submitit."""
    try:
        import submitit

        return submitit.JobEnvironment().num_tasks
    except (ImportError, RuntimeError):  # RuntimeError: not inside a submitit job
        return 0


def init_from_env(device_type: str) -> DistInfo:
    """Join the job's process group if the process was started as one of several tasks
    (submitit/SLURM, then torchrun's ``WORLD_SIZE``); otherwise a single-process ``DistInfo()``.

    ``device_type`` is "cuda" (NCCL, and this process's device set from its local rank) or
    anything else (gloo). A group that is already initialized is kept as it is.
    """
    if tdist.is_available() and tdist.is_initialized():
        return _group_info()
    backend = "nccl" if device_type == "cuda" else "gloo"
    if _submitit_num_tasks() > 1:
        import submitit

        # keep CUDA_VISIBLE_DEVICES: the device is chosen from the local rank below
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        tdist.init_process_group(backend=backend)
    elif int(os.environ.get("WORLD_SIZE", "1")) > 1:
        tdist.init_process_group(backend=backend, init_method="env://")
    else:
        return DistInfo()
    info = _group_info()
    if device_type == "cuda":
        gpus = torch.cuda.device_count()
        if gpus == 0:
            raise RuntimeError(f"rank {info.rank} of a cuda run sees no GPU (CUDA_VISIBLE_DEVICES="
                               f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')!r}): ask the launcher for one GPU "
                               "per task (slurm.gpus_per_node = slurm.tasks_per_node)")
        # modulo: SLURM may already have restricted each task to its own GPU
        torch.cuda.set_device(info.local_rank % gpus)
    return info


@contextmanager
def process_group(device_type: str) -> Iterator[DistInfo]:
    """``init_from_env`` for the length of the block; a group it joined is destroyed at the end
    (however the block ends), so its sockets and NCCL communicators are freed before the process
    goes on (Hydra's basic launcher runs jobs one after another in one process) or ends. A group
    that was there before is the caller's to end. No barrier: rank 0 evaluates alone."""
    joined = not (tdist.is_available() and tdist.is_initialized())
    info = init_from_env(device_type)
    try:
        yield info
    finally:
        if joined and info.world_size > 1 and tdist.is_initialized():
            tdist.destroy_process_group()


def batch_problem(batch_size: int, world_size: int) -> str | None:
    """Why a global batch cannot be split over the ranks (one line), or None. Every rank takes an
    equal contiguous slice (``rank_rows``) and ``gather_with_grad`` gathers equal slices, so the
    batch must divide evenly: a remainder would be dropped without a word, or hang the gather."""
    if batch_size % world_size:
        return (f"optim.batch_size={batch_size} does not split over {world_size} ranks: must be a multiple of "
                f"the world size ({world_size}); e.g. {batch_size - batch_size % world_size or world_size}")
    return None


def rank_rows(n: int, dist: DistInfo) -> slice | None:
    """This rank's contiguous rows of a global batch of ``n`` (None on one process); ``n`` must
    divide by the world size (``batch_problem``, checked before a run starts)."""
    if dist.world_size == 1:
        return None
    if problem := batch_problem(n, dist.world_size):
        raise ValueError(problem)
    per = n // dist.world_size
    return slice(dist.rank * per, (dist.rank + 1) * per)


def barrier() -> None:
    """Wait for every rank; a no-op without a process group."""
    if is_distributed():
        tdist.barrier()


class _FullGather(torch.autograd.Function):
    """all_gather whose backward sums the incoming gradients across ranks and hands each
    rank the slice that belongs to its own input (the official VICReg FullGatherLayer)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> tuple[torch.Tensor, ...]:  # type: ignore[override]
        out = [torch.zeros_like(x) for _ in range(tdist.get_world_size())]
        tdist.all_gather(out, x.contiguous())
        return tuple(out)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        all_grads = torch.stack(grads)
        tdist.all_reduce(all_grads)
        return all_grads[tdist.get_rank()]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """(b_local, d) -> (b_local * world, d), differentiable; identity without a process group."""
    if not is_distributed():
        return x
    return torch.cat(_FullGather.apply(x), dim=0)


def average_gradients(model: torch.nn.Module) -> None:
    """Average every parameter gradient over ranks in one collective (a no-op on one process).
    Used instead of wrapping the model in DDP: each arm leaves some parameters unused (the SSL
    arms the classifier head, the supervised arm the projector), which DDP only handles with
    ``find_unused_parameters`` and its extra graph traversal every step."""
    if not is_distributed():
        return
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    tdist.all_reduce(flat)
    flat /= tdist.get_world_size()
    for g, part in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
        g.copy_(part.view_as(g))
