"""Nothing is lost to an interruption: a signal that arrives anywhere in the training loop (the read
of the logged terms included) is acted on at the next step boundary, a checkpoint write cut by
SIGKILL leaves no temporary file behind once the run resumes, and a resumed run's cost covers
every attempt."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

import embreg.pretrain as P
from embreg.data import load_split
from embreg.models import build_model
from embreg.preemption import SignalCheckpoint
from embreg.run import run_one
from embreg.rundir import checkpoint_path, run_dir
from embreg.steplog import TermLog
from tests.conftest import tool_env


def _model(cfg):
    torch.manual_seed(cfg.seed)
    return build_model(cfg.backbone, cfg.dataset.in_channels, cfg.dataset.num_classes)


@pytest.mark.parametrize("sig", [signal.SIGUSR2, signal.SIGTERM])
def test_a_signal_sent_during_the_read_checkpoints_and_reaches_the_previous_handler(
    smoke_cfg, tmp_path, monkeypatch, sig
):
    """The terms are read after steps 3 (log_every) and 4 (epoch end); the signal arrives inside
    the first read, after the loop took its flags: the run saves at step 3 (mid-epoch, nothing
    else would save there), calls the previous handler once and resumes bit-identically."""
    cfg = smoke_cfg("objective=vicreg", "pretrain.epochs=1", "pretrain.steps_per_epoch=4", "runtime.log_every=3",
                    "runtime.checkpoint_every_s=1e9")
    train = load_split(cfg.paths.data, "fashion_mnist", train=True)
    straight = _model(cfg)
    res = P.pretrain(cfg, straight, train, tmp_path / "a.pt", progress=False)

    real_read, reads, received = TermLog.read, [], []

    def read_and_signal(self, dist, flags=()):
        reads.append(list(flags))
        if len(reads) == 1:
            os.kill(os.getpid(), sig)  # its handler runs here, inside the read
        return real_read(self, dist, flags)

    def previous_handler(signum, frame):
        received.append(signum)
        raise SystemExit(-1)

    monkeypatch.setattr(TermLog, "read", read_and_signal)
    old = signal.signal(sig, previous_handler)
    try:
        with pytest.raises(SystemExit):
            P.pretrain(cfg, _model(cfg), train, tmp_path / "b.pt", progress=False)
        assert signal.getsignal(sig) is previous_handler
    finally:
        signal.signal(sig, old)
    assert reads == [[0.0, 0.0, 0.0]]  # the flags were taken before the signal: it came in the read
    assert received == [sig]
    assert torch.load(tmp_path / "b.pt", weights_only=False)["step"] == 3
    monkeypatch.setattr(TermLog, "read", real_read)
    resumed = _model(cfg)
    res2 = P.pretrain(cfg, resumed, train, tmp_path / "b.pt", progress=False)
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert res["history"] == res2["history"] and res2["resumed_at"] == [3]


def test_a_signal_left_when_the_block_ends_reaches_the_previous_handler():
    """Noted after the last boundary (during the final checkpoint, say): raised again once the
    previous handler is back. One acted on inside is not raised twice."""
    received = []
    old = signal.signal(signal.SIGUSR2, lambda s, f: received.append(s))
    try:
        with SignalCheckpoint() as signals:
            os.kill(os.getpid(), signal.SIGUSR2)
            mark, flags = signals.mark()
            assert flags == [1.0, 0.0] and received == []  # noted, held back
            signals.forward(signals.settle([1.0, 0.0], mark, alone=False))
            assert received == [signal.SIGUSR2]
            os.kill(os.getpid(), signal.SIGUSR2)  # after the last boundary
        assert received == [signal.SIGUSR2] * 2
    finally:
        signal.signal(signal.SIGUSR2, old)


def test_with_several_ranks_a_signal_noted_during_the_read_waits_for_the_next_agreement():
    old = signal.signal(signal.SIGTERM, lambda s, f: None)
    try:
        with SignalCheckpoint() as signals:
            mark, flags = signals.mark()
            os.kill(os.getpid(), signal.SIGTERM)  # during the read
            assert signals.settle([0.0, 0.0], mark, alone=False) == []  # the other ranks know nothing of it
            mark, flags = signals.mark()
            assert flags == [0.0, 1.0]  # told at the next agreement
            assert signals.settle([0.0, 1.0], mark, alone=False) == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, old)


KILLED_WRITER = """
import sys, time
from pathlib import Path
from embreg.io import atomic_write

def write(f):
    f.write(b"x" * 4096)
    f.flush()
    print("writing", flush=True)
    time.sleep(60)

atomic_write(Path(sys.argv[1]), write)
"""


def test_a_write_cut_by_sigkill_leaves_a_temporary_file_that_resuming_removes(smoke_cfg, tmp_path):
    cfg = smoke_cfg("objective=vicreg", "pretrain.epochs=1")
    ckpt = tmp_path / "run" / "last.pt"
    ckpt.parent.mkdir()
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(ckpt)], stdout=subprocess.PIPE, text=True,
                              env=tool_env())
    assert writer.stdout.readline().strip() == "writing"
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=30)
    left = sorted(ckpt.parent.glob(".last.pt.*"))
    assert len(left) == 1 and left[0].stat().st_size == 4096 and not ckpt.exists()
    others = [ckpt.parent / ".other.pt.abc", ckpt.parent / "last.pt.corrupt-20260101T000000-1"]
    for f in others:
        f.write_bytes(b"keep")
    train = load_split(cfg.paths.data, "fashion_mnist", train=True)
    P.pretrain(cfg, _model(cfg), train, ckpt, progress=False)
    assert sorted(p.name for p in ckpt.parent.iterdir()) == sorted(["last.pt", *(f.name for f in others)])


def test_a_resumed_runs_cost_sums_every_attempt(smoke_cfg, monkeypatch):
    """Pretraining seconds (a stand-in clock, 10 s a tick) and per-step times across an
    interruption: the finished run reports the first attempt's seconds up to its checkpoint plus
    the second attempt's, and the CPU seconds of every step."""
    cfg = smoke_cfg("objective=vicreg", "pretrain.epochs=3", "runtime.checkpoint_every_s=1e9")
    ticks: list[float] = []

    def clock() -> float:
        ticks.append(10.0 * len(ticks))
        return ticks[-1]

    monkeypatch.setattr(P, "wall_clock", clock)
    real_save = P.save_checkpoint

    def save_then_die(path, state):
        real_save(path, state)
        raise KeyboardInterrupt

    monkeypatch.setattr(P, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_one(cfg)
    first = torch.load(checkpoint_path(cfg), weights_only=False)
    assert first["step"] == 2 and first["seconds"] == ticks[-1] - ticks[0] > 0
    assert len(first["cpu_times"]) == len(first["step_times"]) == 2
    n1 = len(ticks)
    monkeypatch.setattr(P, "save_checkpoint", real_save)
    assert run_one(cfg)["state"] == "done"
    metrics = json.loads((run_dir(cfg) / "metrics.json").read_text())
    assert metrics["pretrain_seconds"] == first["seconds"] + (ticks[-1] - ticks[n1])
    assert metrics["resumed_at_steps"] == [2] and metrics["steps"] == 6
    last = torch.load(checkpoint_path(cfg), weights_only=False)
    assert len(last["cpu_times"]) == 6 and last["cpu_times"][:2] == first["cpu_times"]
    assert metrics["cpu_sec_per_step"] > 0


def test_partial_writes_are_found_by_their_prefix_only(tmp_path):
    from embreg.io import atomic_write, remove_partial_writes

    path = tmp_path / "last.pt"
    atomic_write(path, lambda f: f.write(b"ok"))
    (tmp_path / ".last.pt.k2j3").write_bytes(b"partial")
    (tmp_path / ".last.ptx.k2j3").write_bytes(b"another file's")
    assert remove_partial_writes(path) == [tmp_path / ".last.pt.k2j3"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".last.ptx.k2j3", "last.pt"]
    assert path.read_bytes() == b"ok" and remove_partial_writes(tmp_path / "none" / "x.pt") == []
