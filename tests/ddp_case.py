"""The multi-process equality case shared by tests/test_distributed.py (ranks spawned on this
machine) and tests/slurm/test_slurm_ddp.py (ranks as the tasks of one SLURM job).

Every rank builds the same small model (no BatchNorm: its statistics would differ per slice),
takes its contiguous slice of one fixed batch of two views and backpropagates ``ssl_loss``.
Run on one process without a group, the same code gives the whole-batch reference.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from embreg.config import ObjectiveConfig
from embreg.distributed import DistInfo, average_gradients, is_distributed
from embreg.objective import ssl_loss

BATCH, D_IN, D_HIDDEN, D_OUT = 16, 16, 32, 24
# the real presets in conf/objective/: raw VICReg, without covariance, SVMax (l2), all layers
OBJECTIVES = ("vicreg", "vicreg_nocov", "svmax", "vicreg_all", "svmax_all")
# how the ranks' gradients are combined: DDP's hooks, or the all-reduce pretrain.py calls
SYNCS = ("ddp", "average_gradients")
Result = dict[str, Any]  # loss: float, terms: dict[str, float], grads: dict[str, Tensor]


class TapNet(nn.Module):
    """Linear-ReLU-Linear; the hidden pre- and post-activation are its taps for layers=all."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(D_IN, D_HIDDEN)
        self.fc2 = nn.Linear(D_HIDDEN, D_OUT)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        h = self.fc1(x)
        a = torch.relu(h)
        return self.fc2(a), {"fc1": h, "relu1": a}


def views() -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed batch of two correlated views, (BATCH, D_IN) each."""
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(BATCH, D_IN, generator=g)
    return x1, x1 + 0.3 * torch.randn(BATCH, D_IN, generator=g)


def compute(obj: ObjectiveConfig, info: DistInfo, sync: str) -> Result:
    """This rank's loss, logged terms and (synchronized) parameter gradients on its slice."""
    torch.manual_seed(0)
    net = TapNet()
    model = DistributedDataParallel(net) if sync == "ddp" and is_distributed() else net
    per = BATCH // info.world_size
    x1, x2 = (x[info.rank * per : (info.rank + 1) * per] for x in views())
    (z1, taps1), (z2, taps2) = model(x1), model(x2)
    loss, terms = ssl_loss(z1, z2, taps1, taps2, obj)
    loss.backward()
    if sync == "average_gradients":
        average_gradients(net)
    grads = {name: p.grad.detach().clone() for name, p in net.named_parameters()}
    return {"loss": loss.item(), "terms": {k: float(v) for k, v in terms.items()}, "grads": grads}


def compute_all(objectives: dict[str, ObjectiveConfig], info: DistInfo) -> dict[tuple[str, str], Result]:
    """``compute`` for every objective and gradient sync, keyed (objective name, sync)."""
    return {(name, sync): compute(obj, info, sync) for name, obj in objectives.items() for sync in SYNCS}


def spawned_rank(rank: int, world_size: int, port: int, task: Callable[[DistInfo], Any], out_dir: Path) -> None:
    """Entry of a spawned process: join a gloo group over TCP, run ``task`` and save what it
    returns to out_dir/rank{rank}.pt. The timeout turns a mismatched collective into an error."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world_size, timeout=timedelta(seconds=60))
    try:
        torch.save(task(DistInfo(rank, world_size, rank)), out_dir / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def assert_matches_whole_batch(ranks: list[Result], whole: Result) -> None:
    """The ranks' results against one process's on the whole batch: the mean loss and mean
    invariance (local to each rank) equal the whole-batch ones, every regularizer term on
    every rank equals the whole-batch term, and every rank holds the whole-batch gradients."""
    n = len(ranks)
    assert sum(r["loss"] for r in ranks) / n == _approx(whole["loss"])
    for key in ("loss", "invariance"):
        assert sum(r["terms"][key] for r in ranks) / n == _approx(whole["terms"][key]), key
    for r in ranks:
        assert r["terms"].keys() == whole["terms"].keys()
        for key, value in whole["terms"].items():
            if key not in ("invariance", "loss"):
                assert r["terms"][key] == _approx(value), key
        for name, g in whole["grads"].items():
            torch.testing.assert_close(r["grads"][name], g, atol=1e-6, rtol=1e-5, msg=name)
            # the synchronized gradients are the very same numbers on every rank
            assert torch.equal(r["grads"][name], ranks[0]["grads"][name]), name


def _approx(x: float):
    return pytest.approx(x, rel=1e-5, abs=1e-6)
