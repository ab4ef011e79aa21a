"""``python -m embreg.train`` as a Hydra user runs it: single runs and multiruns refused alike
(one line, exit 2, nothing written, no Hydra folder), hand runs placed by what they change, the
job's train.log naming where the results went."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import tool_env


def train(tmp_path: Path, data: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "embreg.train", *args, "profile=smoke", f"paths.data={data}",
           f"paths.results={tmp_path}/results", f"paths.checkpoints={tmp_path}/ckpt", "runtime.progress=false"]
    return subprocess.run(cmd, cwd=tmp_path, env=tool_env(), capture_output=True, text=True)


@pytest.mark.parametrize(("args", "message"), [
    (["+pretrain.foo=1"], "error: override '+pretrain.foo=1': the config has no key 'pretrain.foo'; pretrain has: "),
    (["optim.batch_size=0"], "error: invalid config: optim.batch_size=0: must be an integer >= 2"),
    (["-m", "objective=svmax,nosuch"], "error: unknown objective 'nosuch'; valid: "),
    (["--multirun", "optim.batch_size=32,0"], "error: invalid config: optim.batch_size=0: must be an integer >= 2"),
    (["-m", "+objective.terms.nosuch=1"], "error: invalid config: objective.terms.nosuch=1.0: unknown loss term; "),
])
def test_refusals_are_one_line_exit_2_and_leave_nothing(tmp_path, prepared_data, args, message):
    res = train(tmp_path, prepared_data, *args)
    err = res.stderr.strip()
    assert res.returncode == 2 and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith(message), err
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "multirun").exists()
    assert not (tmp_path / "results").exists()


def test_hand_runs_get_their_own_place_and_a_log_that_names_it(tmp_path, prepared_data):
    """A run by hand with a changed epoch count lands beside the profile's own run, never on it; a
    multirun over the arms afterwards fills the profile's places and leaves the hand run alone."""
    res = train(tmp_path, prepared_data, "objective=svmax", "pretrain.epochs=1")
    assert res.returncode == 0, res.stderr[-2000:]
    runs = tmp_path / "results" / "runs"
    assert sorted(p.name for p in runs.iterdir()) == ["svmax@epochs=1"]
    log = next((tmp_path / "outputs").rglob("train.log")).read_text()
    assert f"results in {runs / 'svmax@epochs=1' / 'seed0'}" in log and "svmax@epochs=1 seed0: done" in log
    before = (runs / "svmax@epochs=1" / "seed0" / "metrics.json").read_text()
    res = train(tmp_path, prepared_data, "-m", "objective=svmax,inv_only")
    assert res.returncode == 0, res.stderr[-2000:]
    assert sorted(p.name for p in runs.iterdir()) == ["inv_only", "svmax", "svmax@epochs=1"]
    assert (runs / "svmax@epochs=1" / "seed0" / "metrics.json").read_text() == before
    status = json.loads((runs / "svmax" / "seed0" / "status.json").read_text())
    assert status["state"] == "done" and status["machine"]["command"].startswith("python -m embreg.train")
