"""The stage scripts' one argument: ``--pipeline NAME`` runs another pipeline's section of
params.yaml (the robustness studies' stages in dvc.yaml), ``--profile NAME`` a profile with the
knobs of the section that runs it; anything else is a one-line usage error."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from embreg.params import group_options
from embreg.registry import UnknownNameError

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "pipelines"))
from _common import stage_params  # noqa: E402


def test_pipeline_and_profile_arguments(monkeypatch):
    monkeypatch.chdir(REPO)
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert stage_params([]).profile == raw["default"]["profile"]
    robustness = stage_params(["--pipeline", "robustness"])
    assert (robustness.profile, robustness.pipeline) == (raw["robustness"]["profile"], "robustness")
    assert stage_params(["--profile", "robustness"]) == robustness
    assert (stage_params(["--profile", "smoke"]).overrides, stage_params(["--profile", "smoke"]).pipeline) == ([], None)
    with pytest.raises(UnknownNameError, match=f"unknown profile 'nope'; valid: {', '.join(group_options('profile'))}"):
        stage_params(["--profile", "nope"])
    with pytest.raises(ValueError, match=r"usage: .* \[--pipeline NAME \| --profile NAME\]; got --bogus"):
        stage_params(["--bogus"])
    with pytest.raises(ValueError, match="params.yaml has no pipeline section 'nope'"):
        stage_params(["--pipeline", "nope"])


def test_robustness_stages_run_the_robustness_profile():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert stages["robustness_sweep"]["cmd"].endswith("sweep.py --pipeline robustness")
    assert stages["robustness_analyze"]["cmd"].endswith("analyze.py --pipeline robustness")
    assert stages["robustness_sweep"]["deps"] == stages["sweep"]["deps"]  # the same code, one list
