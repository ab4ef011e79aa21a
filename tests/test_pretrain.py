"""Pretraining resumes bit-identically from its checkpoint (at an epoch end, mid-epoch, after a
preemption signal) and stops on divergence."""

from __future__ import annotations

import math
import os
import signal

import pytest
import torch

import embreg.pretrain as P
from embreg.data import load_split
from embreg.models import build_model
from embreg.pretrain import DivergedError, pretrain


def _model(cfg):
    torch.manual_seed(cfg.seed)
    return build_model(cfg.backbone, cfg.dataset.in_channels, cfg.dataset.num_classes)


@pytest.mark.parametrize("objective", ["vicreg", "svmax_all", "supervised"])
def test_resume_equals_uninterrupted(smoke_cfg, tmp_path, monkeypatch, objective):
    cfg = smoke_cfg(f"objective={objective}", "pretrain.epochs=3")
    train = load_split(cfg.paths.data, "fashion_mnist", train=True)
    straight = _model(cfg)
    res = pretrain(cfg, straight, train, tmp_path / "a.pt", progress=False)

    # the process dies right after the first epoch's checkpoint ...
    real_save = P.save_checkpoint

    def save_then_die(path, state):
        real_save(path, state)
        raise KeyboardInterrupt

    monkeypatch.setattr(P, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        pretrain(cfg, _model(cfg), train, tmp_path / "b.pt", progress=False)
    monkeypatch.setattr(P, "save_checkpoint", real_save)
    # ... and a fresh start with other initial weights resumes from it
    torch.manual_seed(123)
    resumed = build_model(cfg.backbone, 1, 10)
    res2 = pretrain(cfg, resumed, train, tmp_path / "b.pt", progress=False)
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert [h["loss"] for h in res["history"]] == [h["loss"] for h in res2["history"]]
    assert len(res2["history"]) == 3


def test_history_has_every_term_per_epoch(smoke_cfg, tmp_path):
    cfg = smoke_cfg("objective=vicreg_all")
    train = load_split(cfg.paths.data, "fashion_mnist", train=True)
    res = pretrain(cfg, _model(cfg), train, tmp_path / "c.pt", progress=False)
    assert [h["epoch"] for h in res["history"]] == [1, 2]
    for key in ("loss", "invariance", "variance", "covariance", "svmax", "variance_stages", "lr"):
        assert all(key in h for h in res["history"]), key
    h = res["history"][0]
    expected = (25 * h["invariance"] + 25 * (h["variance"] + h["variance_stages"])
                + 1 * (h["covariance"] + h["covariance_stages"]))
    assert h["loss"] == pytest.approx(expected, rel=1e-5)
    assert res["cost"]["sec_per_step"] > 0 and res["cost"]["peak_memory_mb"] > 0


def test_divergence_raises(smoke_cfg, tmp_path):
    cfg = smoke_cfg("objective=vicreg", "optim.name=sgd", "optim.lr=1e30")
    train = load_split(cfg.paths.data, "fashion_mnist", train=True)
    with pytest.raises(DivergedError, match="loss is"):
        pretrain(cfg, _model(cfg), train, tmp_path / "d.pt", progress=False)


def _assert_same(straight, res, resumed, res2):
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert res["history"] == res2["history"]


@pytest.mark.parametrize("die_after_saves", [1, 3])
def test_periodic_checkpoints_resume_mid_epoch(smoke_cfg, tmp_path, monkeypatch, die_after_saves):
    # checkpoint_every_s=0: a checkpoint after every step, so the 1st and 3rd fall mid-epoch
    cfg = smoke_cfg("objective=vicreg", "pretrain.epochs=3", "runtime.checkpoint_every_s=0")
    train = load_split(cfg.paths.data, "fashion_mnist", train=True)
    straight = _model(cfg)
    res = pretrain(cfg, straight, train, tmp_path / "a.pt", progress=False)
    real_save, saves = P.save_checkpoint, []

    def save_then_maybe_die(path, state):
        real_save(path, state)
        saves.append(state["step"])
        if len(saves) == die_after_saves:
            raise KeyboardInterrupt

    monkeypatch.setattr(P, "save_checkpoint", save_then_maybe_die)
    with pytest.raises(KeyboardInterrupt):
        pretrain(cfg, _model(cfg), train, tmp_path / "b.pt", progress=False)
    assert saves == list(range(1, die_after_saves + 1))
    assert torch.load(tmp_path / "b.pt", weights_only=False)["step"] % 2 == 1  # mid-epoch
    monkeypatch.setattr(P, "save_checkpoint", real_save)
    resumed = _model(cfg)
    _assert_same(straight, res, resumed, pretrain(cfg, resumed, train, tmp_path / "b.pt", progress=False))


@pytest.mark.parametrize("sig", [signal.SIGUSR2, signal.SIGTERM])
def test_a_signal_checkpoints_at_the_step_boundary_then_reaches_the_previous_handler(
    smoke_cfg, tmp_path, monkeypatch, sig
):
    """As under submitit: its USR2 handler requeues and exits; here the previous handler
    records the call and exits the same way (SystemExit). A real signal, sent mid-step."""
    cfg = smoke_cfg("objective=svmax", "pretrain.epochs=3", "runtime.checkpoint_every_s=1e9")
    train = load_split(cfg.paths.data, "fashion_mnist", train=True)
    straight = _model(cfg)
    res = pretrain(cfg, straight, train, tmp_path / "a.pt", progress=False)

    real_step, steps, received = P.train_step, [], []

    def step_and_signal(*args, **kwargs):
        out = real_step(*args, **kwargs)
        steps.append(1)
        if len(steps) == 3:  # the middle of epoch 2
            os.kill(os.getpid(), sig)
        return out

    def previous_handler(signum, frame):
        received.append(signum)
        raise SystemExit(-1)

    monkeypatch.setattr(P, "train_step", step_and_signal)
    old = signal.signal(sig, previous_handler)
    try:
        with pytest.raises(SystemExit):
            pretrain(cfg, _model(cfg), train, tmp_path / "b.pt", progress=False)
        assert signal.getsignal(sig) is previous_handler  # the guard put it back
    finally:
        signal.signal(sig, old)
    assert received == [sig] and len(steps) == 3  # the step was finished, no further one begun
    assert torch.load(tmp_path / "b.pt", weights_only=False)["step"] == 3
    monkeypatch.setattr(P, "train_step", real_step)
    resumed = _model(cfg)
    _assert_same(straight, res, resumed, pretrain(cfg, resumed, train, tmp_path / "b.pt", progress=False))


def test_bf16_autocast_trains_and_feeds_float32_to_the_loss(smoke_cfg, tmp_path):
    """bf16 (the GPU profiles' precision) runs on CPU too: finite losses, and unlike fp32."""
    cfg16 = smoke_cfg("objective=svmax", "pretrain.precision=bf16", "pretrain.epochs=1")
    cfg32 = smoke_cfg("objective=svmax", "pretrain.epochs=1")
    train = load_split(cfg16.paths.data, "fashion_mnist", train=True)
    h16 = pretrain(cfg16, _model(cfg16), train, tmp_path / "a.pt", progress=False)["history"]
    h32 = pretrain(cfg32, _model(cfg32), train, tmp_path / "b.pt", progress=False)["history"]
    assert all(math.isfinite(v) for v in h16[0].values())
    assert h16[0]["loss"] != h32[0]["loss"] and h16[0]["loss"] == pytest.approx(h32[0]["loss"], rel=0.2)
