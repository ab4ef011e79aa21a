"""Pretraining's cost records CPU seconds per step beside wall seconds, so that a run slowed by
other processes (wall >> CPU) is told apart from one whose steps cost more (both up)."""

from __future__ import annotations

import torch

from embreg.data import load_split
from embreg.models import build_model
from embreg.pretrain import pretrain
from embreg.steplog import cost_summary


def test_cost_summary_medians_skip_the_first_step() -> None:
    cost = cost_summary([5.0, 1.0, 3.0, 2.0], 4, torch.device("cpu"), [9.0, 0.5, 1.5, 1.0])
    assert cost["steps"] == 4
    assert cost["sec_per_step"] == 2.0 and cost["images_per_sec"] == 2.0
    assert cost["cpu_sec_per_step"] == 1.0
    assert "cpu_sec_per_step" not in cost_summary([1.0, 2.0], 4, torch.device("cpu"))


def test_pretrain_reports_cpu_seconds_per_step(smoke_cfg, tmp_path) -> None:
    cfg = smoke_cfg("objective=vicreg")
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.backbone, cfg.dataset.in_channels, cfg.dataset.num_classes)
    res = pretrain(cfg, model, load_split(cfg.paths.data, "fashion_mnist", train=True), tmp_path / "c.pt",
                   progress=False)
    cost = res["cost"]
    assert cost["cpu_sec_per_step"] > 0
    # one process's CPU time cannot run ahead of its wall time by more than its thread count
    assert cost["cpu_sec_per_step"] <= cost["sec_per_step"] * torch.get_num_threads() * 1.05 + 1e-3
