"""The run directory's rules: the state vocabulary, status.json, and "finished with this
fingerprint", on files written by hand (no training)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from embreg.config import PathsConfig, RunConfig
from embreg.fingerprint import fingerprint_of, fingerprint_parts, run_fingerprint
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
    cfg = RunConfig(arm="svmax", seed=2, tag_keys=["objective.terms.svmax"],
                    paths=PathsConfig(results=str(tmp_path / "res"), checkpoints=str(tmp_path / "ck")))
    cfg = replace(cfg, objective=replace(cfg.objective, space="l2", terms={"invariance": 1.0, "svmax": 0.3}))
    assert run_id(cfg) == "svmax@svmax=0.3"
    assert run_dir(cfg) == tmp_path / "res" / "runs" / "svmax@svmax=0.3" / "seed2"
    assert checkpoint_path(cfg) == tmp_path / "ck" / "svmax@svmax=0.3" / "seed2" / "last.pt"
    rd = run_dir(cfg)
    assert read_status(rd) == {"state": "missing"}
    assert observe(cfg).state == State.MISSING
    parts = fingerprint_parts(cfg)
    fp = run_fingerprint(cfg)
    write_status(rd, {"state": State.DONE, "fingerprint": fp, "fingerprint_parts": parts})
    assert json.loads((rd / "status.json").read_text())["fingerprint"] == fp
    assert not is_finished(cfg) and observe(cfg).state == State.INCOMPLETE  # no metrics.json
    (rd / "metrics.json").write_text('{"linear_top1": 50.0}')
    assert is_finished(cfg) and is_finished(cfg, fp) and not is_finished(cfg, "another fingerprint")
    assert observe(cfg).state == State.DONE
    # the same run finished by other training code: stale, and the status says which part changed
    old = {**parts, "train": "0" * 16, "term:svmax": "1" * 16}
    write_status(rd, {"state": State.DONE, "fingerprint": fingerprint_of(old), "fingerprint_parts": old})
    seen = observe(cfg)
    assert seen.state == State.STALE and seen.why == ["code: train, term:svmax"]
    with pytest.raises(ValueError):
        write_status(rd, {"state": "finished"})
