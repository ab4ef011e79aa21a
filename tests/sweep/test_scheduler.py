"""SLURM's answers parsed without a cluster: sacct/squeue lines, array ranges, which source wins,
and when the scheduler's verdict overrules a run's status file."""

from __future__ import annotations

import pytest

from embreg.rundir import IN_FLIGHT, State
from embreg.sweep import scheduler as S


@pytest.mark.parametrize(("job", "tasks"), [
    ("12_[1,3-4%2]", ["12_1", "12_3", "12_4"]),
    ("7_[0-2]", ["7_0", "7_1", "7_2"]),
    ("7_[5]", ["7_5"]),
    ("12_3", ["12_3"]),
    ("99", ["99"]),
])
def test_expand_array_ranges(job, tasks):
    assert S._expand(job) == tasks


def test_parse_skips_steps_expands_ranges_and_prefers_a_tasks_own_line():
    out = "\n".join([
        "100|COMPLETED",
        "100.batch|COMPLETED",  # a job step: skipped
        "101_[0-2]|PENDING",
        "101_1|CANCELLED by 0",  # the task's own line wins over the range listing it
        "102|",  # no state yet
        "",
    ])
    assert S._parse(out) == {"100": "COMPLETED", "101_0": "PENDING", "101_1": "CANCELLED",
                             "101_2": "PENDING", "102": "UNKNOWN"}
    assert S._parse(None) == {} and S._parse("") == {}


def test_merge_prefers_squeue_and_drops_stale_active_accounting():
    acct = {"1": "PENDING", "2": "COMPLETED", "3": "RUNNING"}
    live = {"3": "RUNNING", "4": "PENDING"}
    # squeue answered: 1 is not in the queue any more, so sacct's PENDING is stale
    assert S._merge(acct, live) == {"2": "COMPLETED", "3": "RUNNING", "4": "PENDING"}
    # squeue did not answer: accounting as it is
    assert S._merge(acct, None) == acct


@pytest.mark.parametrize(("file_state", "verdict", "expected"), [
    ("running", "CANCELLED", State.CANCELLED),
    ("queued", "TIMEOUT", State.TIMEOUT),
    ("interrupted", "OUT_OF_MEMORY", State.OUT_OF_MEMORY),
    ("running", "NODE_FAIL", State.NODE_FAIL),
    ("running", "COMPLETED", State.FAILED),  # the job ended without the run writing its end
    ("running", "UNKNOWN", State.FAILED),
    ("running", "RUNNING", None),  # still active: the file stands
    ("interrupted", "REQUEUED", None),
    ("running", None, None),  # no record: no evidence either way
    ("done", "CANCELLED", None),  # a finished run is never overruled
    ("failed", "FAILED", None),
])
def test_overruled(file_state, verdict, expected):
    assert S.overruled(file_state, verdict) == expected


def test_every_lost_verdict_is_a_run_state():
    for verdict in S.LOST:
        assert S.overruled("running", verdict) == State(verdict.lower())
    assert S.ACTIVE.isdisjoint(S.LOST)
    assert {s.value for s in IN_FLIGHT} == {"queued", "running", "interrupted"}


def test_no_cluster_means_empty_answers(monkeypatch):
    monkeypatch.setattr(S.shutil, "which", lambda name: None)
    assert S.available() is False
    assert S.job_states(["1"]) == {} and S.jobs_named("x") == {}
