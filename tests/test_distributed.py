"""embreg.distributed on two spawned processes (gloo): ranks that each take half of a batch
compute the whole batch's loss and, once gradients are synchronized, its gradients; and the
helpers are the identity on one process."""

from __future__ import annotations

import os
import socket
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

from embreg import distributed as D
from embreg.config import ObjectiveConfig
from embreg.distributed import DistInfo
from embreg.params import compose_run
from tests.ddp_case import OBJECTIVES, SYNCS, assert_matches_whole_batch, compute, compute_all, spawned_rank

pytestmark = pytest.mark.ddp

WORLD = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(entry, task, out_dir: Path) -> list[Any]:
    """Run ``task`` on WORLD spawned ranks started through ``entry``; their results by rank."""
    mp.start_processes(entry, args=(WORLD, free_port(), task, out_dir), nprocs=WORLD, start_method="spawn")
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.fixture(scope="module")
def objectives() -> dict[str, ObjectiveConfig]:
    return {name: compose_run("smoke", [f"objective={name}"]).objective for name in OBJECTIVES}


@pytest.fixture(scope="module")
def two_ranks(objectives, tmp_path_factory) -> list[dict]:
    """Every objective and gradient sync on two ranks, in one spawn."""
    return spawn(spawned_rank, partial(compute_all, objectives), tmp_path_factory.mktemp("ddp"))


def test_presets_are_the_ones_meant(objectives):
    assert (objectives["vicreg"].space, objectives["svmax"].space) == ("raw", "l2")
    assert objectives["vicreg_nocov"].terms.get("covariance", 0) == 0 and objectives["svmax"].terms["svmax"] > 0
    assert {n for n, o in objectives.items() if o.layers == "all"} == {"vicreg_all", "svmax_all"}


@pytest.mark.parametrize("sync", SYNCS)
@pytest.mark.parametrize("name", OBJECTIVES)
def test_two_ranks_match_the_whole_batch(two_ranks, objectives, name, sync):
    whole = compute(objectives[name], DistInfo(), sync)
    assert_matches_whole_batch([r[(name, sync)] for r in two_ranks], whole)


@pytest.mark.parametrize("name", OBJECTIVES)
def test_half_batch_alone_differs(objectives, name):
    """Without the gather, a rank's regularizers and gradients would be its half's: the
    equality above is not vacuous."""
    obj = objectives[name]
    whole, half = compute(obj, DistInfo(), "ddp"), compute(obj, DistInfo(0, WORLD), "ddp")
    trained = [k for k in ("variance", "covariance", "svmax") if obj.terms.get(k, 0) > 0]
    assert all(abs(half["terms"][k] - whole["terms"][k]) > 1e-3 for k in trained)
    assert not all(torch.allclose(half["grads"][n], g, atol=1e-3) for n, g in whole["grads"].items())


# ------------------------------------------------------------------ gather_with_grad alone
def _rows() -> torch.Tensor:
    return torch.randn(8 * WORLD, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def _coupled(g: torch.Tensor) -> torch.Tensor:
    """A loss that mixes all rows (a covariance's square), so each row's gradient needs the others."""
    c = g - g.mean(dim=0)
    return (c.T @ c).pow(2).sum() / len(g)


def gather_task(info: DistInfo) -> dict[str, torch.Tensor]:
    """Rank r backpropagates (r + 1) * loss(gathered rows), so sum and mean over ranks differ."""
    per = len(_rows()) // info.world_size
    x = _rows()[info.rank * per : (info.rank + 1) * per].requires_grad_()
    g = D.gather_with_grad(x)
    ((info.rank + 1) * _coupled(g)).backward()
    return {"gathered": g.detach(), "grad": x.grad}


def test_gather_with_grad_returns_each_rank_its_slice(tmp_path):
    """Forward: every rank sees the whole batch in rank order. Backward: rank r gets its rows of
    the whole-batch gradient of the ranks' summed losses, sum_r (r + 1) * loss; with the same
    loss on every rank that is world_size x its slice, which the gradient average then cancels."""
    ranks = spawn(spawned_rank, gather_task, tmp_path)
    x = _rows().requires_grad_()
    _coupled(x).backward()
    per = len(x) // WORLD
    weight = sum(r + 1 for r in range(WORLD))
    for r, out in enumerate(ranks):
        assert torch.equal(out["gathered"], x.detach())
        torch.testing.assert_close(out["grad"], weight * x.grad[r * per : (r + 1) * per])


def shutdown() -> None:
    """Leave the process group init_from_env joined (a run never needs to: its process ends)."""
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


# ------------------------------------------------------------------ init_from_env and helpers
def torchrun_rank(rank: int, world_size: int, port: int, task, out_dir: Path) -> None:
    """Entry of a spawned process started the way torchrun starts one: by environment only."""
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    try:
        torch.save(task(D.init_from_env("cpu")), out_dir / f"rank{rank}.pt")
    finally:
        shutdown()


def _two_steps_read(info: DistInfo) -> tuple[dict, list]:
    from embreg.steplog import TermLog

    log = TermLog()
    log.add({"a": torch.tensor(float(info.rank)), "b": torch.tensor(2.0 * info.rank)})
    log.add({"a": torch.tensor(info.rank + 1.0)})  # b logged every other step only
    return log.read(info, [float(info.rank == 1), 0.0])


def helpers_task(info: DistInfo) -> dict[str, Any]:
    D.barrier()
    grad = torch.nn.Linear(1, 1, bias=False)
    grad.weight.grad = torch.full((1, 1), float(info.rank))
    D.average_gradients(grad)
    return {
        "info": info,
        "again": D.init_from_env("cpu"),  # a group that exists is kept
        "read": _two_steps_read(info),
        "grad": grad.weight.grad.item(),
    }


def test_init_from_env_and_helpers_on_two_ranks(tmp_path):
    ranks = spawn(torchrun_rank, helpers_task, tmp_path)
    mean = sum(range(WORLD)) / WORLD
    for r, out in enumerate(ranks):
        assert out["info"] == out["again"] == DistInfo(rank=r, world_size=WORLD, local_rank=r)
        assert out["info"].is_main == (r == 0)
        assert out["grad"] == mean
        # the logged terms' means over ranks, in step order; flags summed (rank 1 got a signal)
        values, flags = out["read"]
        assert values == {"a": [mean, mean + 1.0], "b": [2 * mean]} and flags == [1.0, 0.0]


def test_single_process_is_the_identity(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "SUBMITIT_EXECUTOR"):
        monkeypatch.delenv(var, raising=False)
    assert D.init_from_env("cpu") == DistInfo() == DistInfo(0, 1, 0)
    assert DistInfo().is_main and not DistInfo(rank=1, world_size=2).is_main
    assert not D.is_distributed()
    x = torch.arange(6.0).reshape(3, 2)
    assert D.gather_with_grad(x) is x
    lin = torch.nn.Linear(2, 1)
    lin.weight.grad = torch.ones(1, 2)
    D.average_gradients(lin)
    assert torch.equal(lin.weight.grad, torch.ones(1, 2))
    D.barrier()
    shutdown()


# ------------------------------------------------------------------ pretraining's signal agreement
def signal_task(cfg, ckpt: Path, during_read: bool, info: DistInfo) -> dict[str, Any]:
    """Pretrain on this rank; rank 1 alone receives USR2, after its third step or (``during_read``)
    inside its first read of the logged terms, after the flags it tells the others were taken.
    Every rank's previous USR2 handler records the step at which it is called, then exits as
    submitit's does."""
    import signal

    import embreg.pretrain as P
    from embreg.data import load_split
    from embreg.models import build_model
    from embreg.steplog import TermLog

    real_step, real_read, steps, reads, received = P.train_step, TermLog.read, [], [], []

    def step(*args, **kwargs):
        out = real_step(*args, **kwargs)
        steps.append(1)
        if info.rank == 1 and len(steps) == 3 and not during_read:
            os.kill(os.getpid(), signal.SIGUSR2)
        return out

    def read(self, dist, flags=()):
        reads.append(1)
        if info.rank == 1 and len(reads) == 1 and during_read:
            os.kill(os.getpid(), signal.SIGUSR2)
        return real_read(self, dist, flags)

    def previous(signum, frame):
        received.append((signum, len(steps)))
        raise SystemExit(0)

    P.train_step, TermLog.read = step, read
    signal.signal(signal.SIGUSR2, previous)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.backbone, cfg.dataset.in_channels, cfg.dataset.num_classes)
    train = load_split(cfg.paths.data, "fashion_mnist", train=True)
    try:
        P.pretrain(cfg, model, train, ckpt, progress=False, dist=info)
    except SystemExit:
        pass
    return {"received": received, "steps": len(steps)}


@pytest.mark.parametrize("during_read", [False, True])
def test_a_signal_to_one_rank_stops_every_rank_at_the_same_step(smoke_cfg, tmp_path, during_read):
    """The ranks agree where they read their logged terms (every log_every steps): the signalled
    rank does not stop alone while the other waits in a collective; both checkpoint, then both
    hand the signal to their previous handler, at the same step. A signal that reaches rank 1
    inside its read at step 2 (too late for that agreement) is kept for the next one, at step 4."""
    import signal

    cfg = smoke_cfg("objective=vicreg", "pretrain.epochs=4", "pretrain.steps_per_epoch=4", "runtime.log_every=2",
                    "runtime.checkpoint_every_s=1e9", "optim.batch_size=16")
    ranks = spawn(spawned_rank, partial(signal_task, cfg, tmp_path / "c.pt", during_read), tmp_path)
    assert [r["received"] for r in ranks] == [[(signal.SIGUSR2, 4)]] * WORLD
    assert [r["steps"] for r in ranks] == [4, 4]
    assert torch.load(tmp_path / "c.pt", weights_only=False)["step"] == 4  # rank 0's checkpoint


# ------------------------------------------------------------------ one run on two ranks, start to end
def env_rank(rank: int, world_size: int, port: int, task, out_dir: Path) -> None:
    """Entry of a spawned process started the way torchrun starts one, joining no group itself:
    ``task`` (a run) joins it from the environment."""
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.save(task(), out_dir / f"rank{rank}.pt")


def runs_task(bad, good) -> dict[str, Any]:
    """A run whose batch does not split over the ranks, then one that does: what each returned
    or raised, and whether a process group was left behind after each."""
    from embreg.checks import ConfigError
    from embreg.run import run_one

    out: dict[str, Any] = {}
    try:
        run_one(bad)
    except ConfigError as exc:
        out["refused"] = str(exc)
    out["group_after_refusal"] = torch.distributed.is_initialized()
    out["state"] = run_one(good)["state"]
    out["group_after_run"] = torch.distributed.is_initialized()
    return out


def test_a_run_on_two_ranks_leaves_its_process_group_and_refuses_a_batch_that_does_not_split(smoke_cfg, tmp_path):
    """run_one joins the group from the environment and destroys it when it ends, refused or
    finished; a global batch of 33 on two ranks is refused in one line before anything is
    written (a remainder would be dropped, or hang the gather)."""
    from embreg.rundir import run_dir

    bad = smoke_cfg("objective=vicreg", "optim.batch_size=33", "seed=1", "runtime.threads=1")
    good = smoke_cfg("objective=vicreg", "optim.batch_size=16", "pretrain.epochs=1", "runtime.threads=1")
    ranks = spawn(env_rank, partial(runs_task, bad, good), tmp_path)
    for out in ranks:
        assert out["refused"] == ("optim.batch_size=33 does not split over 2 ranks: must be a multiple of the world "
                                  "size (2); e.g. 32")
        assert out["group_after_refusal"] is False and out["group_after_run"] is False
        assert out["state"] == "done"
    assert not run_dir(bad).exists() and (run_dir(good) / "metrics.json").is_file()


def test_rank_rows_never_drop_a_remainder():
    assert D.rank_rows(32, DistInfo(1, 2)) == slice(16, 32) and D.rank_rows(33, DistInfo()) is None
    with pytest.raises(ValueError, match="does not split over 2 ranks"):
        D.rank_rows(33, DistInfo(0, 2))
