"""The extension guide, followed as a researcher would: a term defined in a module outside the
package (named in $EMBREG_TERMS), one objective YAML and one ablation file, and nothing else.
The term is registered, checked, trained in a real smoke sweep (local submitit jobs), and
appears in the tables, the loss-term plot's data and the regime table."""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
from pathlib import Path

import pytest

from embreg.analysis.report import analyze
from embreg.params import PipelineParams
from embreg.sweep.launch import launch
from embreg.sweep.plan import make_plan, write_manifest

REPO = Path(__file__).resolve().parents[2]

TERM_MODULE = '''
"""A new regularizer: the squared norm of the batch mean of each view (a centring term)."""
import torch
from embreg.terms import Param, term


@term("centering", "pulls each view's batch mean to the origin", equation="sum_views ||mean_i z_i||^p",
      params={"power": Param(2.0, "the norm's power", lo=1)}, regularizer=True)
def centering(views, power: float) -> torch.Tensor:
    return sum(z.mean(0).norm().pow(power) for z in views.embedded())
'''
OBJECTIVE = """
# inv_only plus the new term
defaults:
  - inv_only
  - _self_
name: centered
terms: {centering: 0.5}
params:
  centering: {power: 2.0}
"""
ABLATION = """
name: centering
title: "E. A new regularizer"
question: Does the centring term change anything?
arms: [centered, inv_only]
baselines: [random_init]
sweeps:
  - {arm: centered, key: objective.terms.centering, values: [2.0]}
comparisons:
  - [centered, inv_only]
seeds: [0, 1]
sweep_seeds: [0]
"""


@pytest.mark.slow
def test_a_term_from_outside_the_package_goes_through_the_whole_suite(tmp_path, prepared_data, monkeypatch):
    plugin = tmp_path / "plugin"
    plugin.mkdir()
    (plugin / "lab_terms.py").write_text(textwrap.dedent(TERM_MODULE))
    conf = tmp_path / "conf"
    shutil.copytree(REPO / "conf", conf)
    (conf / "objective" / "centered.yaml").write_text(OBJECTIVE)
    (conf / "ablation" / "centering.yaml").write_text(ABLATION)
    # what the sweep's jobs inherit: the term module, the config tree
    monkeypatch.setenv("EMBREG_TERMS", "lab_terms")
    monkeypatch.setenv("PYTHONPATH", f"{plugin}:{':'.join(p for p in sys.path if p)}")
    monkeypatch.setenv("EMBREG_CONF", str(conf))
    monkeypatch.syspath_prepend(str(plugin))
    monkeypatch.chdir(tmp_path)
    results = tmp_path / "results"
    params = PipelineParams(profile="smoke", data_dir=str(prepared_data),
                            overrides=[f"paths.results={results}", f"paths.checkpoints={tmp_path}/ckpt"])
    plan = make_plan(params, ["centering"])
    assert launch(plan, params, tmp_path / "sweep.log") == 0
    write_manifest(plan, results)

    history = json.loads((results / "runs" / "centered" / "seed0" / "history.json").read_text())
    assert all(h["centering"] >= 0 for h in history)  # trained and logged
    config = (results / "runs" / "centered" / "seed0" / "config.yaml").read_text()
    assert "centering: 0.5" in config
    summary = analyze(results, conf)
    assert summary["arms"]["centered"]["n"] == 2 and summary["arms"]["centered@centering=2.0"]["n"] == 1
    assert "centered vs inv_only" in summary["comparisons"]["centering"]
    tables = results / "tables"
    assert "centered" in (tables / "centering.md").read_text()
    assert "centered" in (tables / "regime.md").read_text()  # a regularizer: its regime is reported
    assert "centering" in (tables / "history.csv").read_text()  # the loss-term plot's data
    assert (results / "plots" / "loss_terms.png").is_file() and (results / "plots" / "centering_accuracy.png").is_file()
