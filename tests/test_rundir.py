"""The run directory's rules: the state vocabulary, status.json, and "finished with this
fingerprint", on files written by hand (no training)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from embreg.config import PathsConfig, RunConfig
from embreg.rundir import (
    FINISHED,
    IN_FLIGHT,
    State,
    checkpoint_path,
    is_finished,
    judge,
    observe,
    read_status,
    run_dir,
    run_id,
    write_status,
)


def test_a_state_is_its_string():
    assert State.DONE == "done" and f"{State.DONE}" == "done" and str(State.STALE) == "stale"
    assert {"done": 1}[State.DONE] == 1  # hashed like the string: usable as a key either way
    assert json.dumps({"state": State.QUEUED}) == '{"state": "queued"}'
    assert IN_FLIGHT.isdisjoint(FINISHED) and State.MISSING not in FINISHED | IN_FLIGHT


@pytest.mark.parametrize(("status", "state"), [
    ({"state": "done", "fingerprint": "abc"}, State.DONE),
    ({"state": "done", "fingerprint": "old"}, State.STALE),  # other config or code
    ({"state": "done"}, State.STALE),
    ({"state": "failed", "fingerprint": "abc"}, State.FAILED),
    ({"state": "running"}, State.RUNNING),
    ({"state": "timeout"}, State.TIMEOUT),
    ({}, State.MISSING),
])
def test_judge(status, state):
    assert judge(status, "abc") == state


def test_unknown_state_in_a_file_fails():
    with pytest.raises(ValueError):
        judge({"state": "exploded"}, "abc")


def test_paths_and_status_round_trip(tmp_path):
    cfg = RunConfig(arm="svmax", seed=2, tag_keys=["objective.svmax"],
                    paths=PathsConfig(results=str(tmp_path / "res"), checkpoints=str(tmp_path / "ck")))
    cfg = replace(cfg, objective=replace(cfg.objective, svmax=0.3))
    assert run_id(cfg) == "svmax@svmax=0.3"
    assert run_dir(cfg) == tmp_path / "res" / "runs" / "svmax@svmax=0.3" / "seed2"
    assert checkpoint_path(cfg) == tmp_path / "ck" / "svmax@svmax=0.3" / "seed2" / "last.pt"
    rd = run_dir(cfg)
    assert read_status(rd) == {"state": "missing"}
    assert observe(cfg, "code").state == State.MISSING
    fp = cfg.fingerprint("code")
    write_status(rd, {"state": State.DONE, "fingerprint": fp})
    assert json.loads((rd / "status.json").read_text()) == {"state": "done", "fingerprint": fp}
    assert not is_finished(cfg, fp) and observe(cfg, "code").state == State.INCOMPLETE  # no metrics.json
    (rd / "metrics.json").write_text('{"linear_top1": 50.0}')
    assert is_finished(cfg, fp) and not is_finished(cfg, cfg.fingerprint("other code"))
    seen = observe(cfg, "other code")
    assert seen.state == State.STALE and seen.status["fingerprint"] == fp
    with pytest.raises(ValueError):
        write_status(rd, {"state": "finished"})
