"""The stage scripts' one argument: ``--profile NAME`` runs another profile's pipeline (the robustness
studies' stages in dvc.yaml); anything else is a one-line usage error."""

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


def test_profile_argument(monkeypatch):
    monkeypatch.chdir(REPO)
    assert stage_params([]).profile == yaml.safe_load((REPO / "params.yaml").read_text())["profile"]
    assert stage_params(["--profile", "robustness"]).profile == "robustness"
    with pytest.raises(UnknownNameError, match=f"unknown profile 'nope'; valid: {', '.join(group_options('profile'))}"):
        stage_params(["--profile", "nope"])
    with pytest.raises(ValueError, match=r"usage: .* \[--profile NAME\]; got --bogus"):
        stage_params(["--bogus"])


def test_robustness_stages_run_the_robustness_profile():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert stages["robustness_sweep"]["cmd"].endswith("sweep.py --profile robustness")
    assert stages["robustness_analyze"]["cmd"].endswith("analyze.py --profile robustness")
    assert stages["robustness_sweep"]["deps"] == stages["sweep"]["deps"]  # the same code, one list
