"""`embreg.bench.mfu`: FLOPs counted as an independent analytic count says, MFU consistent with its
parts, the fused AdamW it measures equal to the library's, and the CLI's JSON and table."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from embreg.bench import mfu
from embreg.models import build_model
from embreg.optim import build_optimizer


def analytic_fwd_bwd_flops(model: nn.Module, x: torch.Tensor) -> int:
    """2 * MACs of every conv and linear in one forward, from hooks on the modules' shapes; the
    backward costs twice that (input and weight gradients), except the first conv, whose input
    (the images) needs no gradient."""
    fwd: list[tuple[nn.Module, int]] = []

    def hook(mod: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        if isinstance(mod, nn.Conv2d):
            k = mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]
            fwd.append((mod, 2 * out.numel() * k))
        else:  # nn.Linear
            fwd.append((mod, 2 * out.numel() * mod.in_features))

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    first = fwd[0][1]  # conv1 on the images
    return sum(3 * f for _, f in fwd) - first


def test_count_flops_matches_analytic_count(default_cfg_small) -> None:
    cfg = default_cfg_small
    model = build_model(cfg.backbone, cfg.dataset.in_channels, cfg.dataset.num_classes).train()
    x = torch.randn(cfg.optim.batch_size, cfg.dataset.in_channels, cfg.dataset.image_size, cfg.dataset.image_size)
    counted = mfu.count_flops(lambda: model(x)[0].sum().backward())
    assert counted == analytic_fwd_bwd_flops(model, x)


def test_sgemm_flops() -> None:
    _, flops = mfu.sgemm_step(64)
    assert flops == 2 * 64**3 == mfu.count_flops(mfu.sgemm_step(64)[0])


@pytest.fixture(scope="module")
def default_cfg_small():
    return mfu.default_config(batch=4)


@pytest.fixture(scope="module")
def small_result() -> dict:
    return mfu.measure([1], repeats=1, batch=4, sgemm_n=128)


def test_measure_is_consistent(small_result: dict) -> None:
    res = small_result
    rows = {r["step"]: r for r in res["rows"]}
    assert set(rows) == {"pretrain", "bare", "bare_nchw", "bare_fused"}
    # the memory format and the optimizer change no FLOPs; the objective adds its matmuls
    assert res["flops"]["bare"] == res["flops"]["bare_nchw"] == res["flops"]["bare_fused"]
    assert res["flops"]["pretrain"] > res["flops"]["bare"]
    assert res["mflop_per_image_per_view"] == pytest.approx(res["flops"]["bare"] / 2 / 4 / 1e6)
    for r in rows.values():
        assert r["mfu"] == pytest.approx(r["gflops_wall"] / r["peak_gflops_wall"])
        assert r["mfu_cpu"] == pytest.approx(r["gflops_cpu"] / r["peak_gflops_cpu"])
        assert r["images_per_s"] == pytest.approx(4e3 / r["ms_wall"])
        assert math.isfinite(r["mfu"]) and r["mfu"] > 0
    text = mfu.markdown(res)
    assert text.count("| pretrain ") == 1 and "MFU %" in text


def test_per_image_flops_do_not_depend_on_batch(small_result: dict) -> None:
    """FLOPs are linear in the batch: per image per view is the same at batch 4 and 8."""
    cfg = mfu.default_config(batch=8)
    _, fwd_bwd = mfu.bare_step(cfg)
    per_image = mfu.count_flops(fwd_bwd) / 2 / 8 / 1e6
    assert per_image == pytest.approx(small_result["mflop_per_image_per_view"], rel=1e-12)


def test_fused_adamw_equals_the_library_optimizer(default_cfg_small) -> None:
    """The fused AdamW that ``bare_fused`` times makes the library AdamW's updates to float
    rounding: the same gradients (from a real backward, so in the channels_last weights'
    layout) fed to both for three steps. (Recomputing the gradients on each copy would let
    Adam's normalisation amplify the first step's rounding differences.)"""
    cfg = default_cfg_small
    torch.manual_seed(0)
    model = build_model(cfg.backbone, cfg.dataset.in_channels, cfg.dataset.num_classes).train()
    other = copy.deepcopy(model)
    ref = build_optimizer(model, cfg.optim)
    twin = {id(a): b for a, b in zip(model.parameters(), other.parameters(), strict=True)}
    groups = [{"params": [twin[id(p)] for p in g["params"]], "weight_decay": g["weight_decay"]} for g in ref.param_groups]
    fused = torch.optim.AdamW(groups, lr=cfg.optim.lr, fused=True)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        ref.zero_grad(set_to_none=True)
        model(torch.randn(cfg.optim.batch_size, 1, 28, 28, generator=gen))[0].pow(2).mean().backward()
        for a, b in zip(model.parameters(), other.parameters(), strict=True):
            b.grad = None if a.grad is None else a.grad.clone()  # clone keeps the channels_last layout
        ref.step()
        fused.step()
    for a, b in zip(model.parameters(), other.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_cli_writes_json_and_table(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    monkeypatch.setattr(mfu, "measure", lambda threads, repeats, batch: _fake(threads, batch))
    assert mfu.main(["--threads", "1", "--repeats", "1", "--batch", "4", "--out", str(tmp_path / "m.json")]) == 0
    saved = json.loads((tmp_path / "m.json").read_text())
    assert saved["rows"][0]["step"] == "bare"
    assert "| bare " in capsys.readouterr().out


def _fake(threads: list[int], batch: int) -> dict:
    row = {"step": "bare", "threads": threads[0], "gflop": 1.0, "ms_wall": 10.0, "ms_cpu": 10.0, "gflops_wall": 100.0,
           "peak_gflops_wall": 200.0, "mfu": 0.5, "gflops_cpu": 100.0, "peak_gflops_cpu": 200.0, "mfu_cpu": 0.5}
    return {"batch": batch, "repeats": 1, "sgemm_n": 64, "load_average": (0.0, 0.0, 0.0), "cpus": 2,
            "mflop_per_image_per_view": 1.0, "flops": {}, "rows": [row]}


def test_cli_rejects_bad_arguments() -> None:
    with pytest.raises(SystemExit):
        mfu.main(["--threads", "0"])


@pytest.mark.slow
def test_jobs_throughput_runs_its_workers_together() -> None:
    """Two worker processes of one thread each start from a common time and report their images."""
    res = mfu.jobs_throughput(2, 1, steps=2, batch=4, delay_s=40.0)
    assert res["jobs"] == 2 and res["threads"] == 1
    assert 0 < res["images_per_s"] < math.inf
