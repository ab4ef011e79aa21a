"""`embreg bench --quick`: the results' structure, SVMax against the svd reference, and honest
targets (``met`` is exactly value <op> target; BENCH.md lists each)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from embreg.bench import AGREEMENT_TOL, QUICK_SIZES, run_bench

REPO = Path(__file__).resolve().parents[1]
OPS = {">=": lambda v, t: v >= t, "<=": lambda v, t: v <= t, "==": lambda v, t: v == t}


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("bench")
    return run_bench(out, quick=True, threads=1), out  # one thread: quick on a busy machine


def test_json_structure(quick: tuple[dict[str, Any], Path]) -> None:
    res, out = quick
    saved = json.loads((out / "bench.json").read_text())
    assert saved["targets"] == res["targets"]
    env = saved["environment"]
    for key in ("timestamp", "git_revision", "torch", "torch_threads", "cpu", "repeats"):
        assert env[key] not in (None, "")
    assert env["quick"] is True and env["torch_threads"] == 1
    assert [(r["b"], r["d"]) for r in saved["svmax"]] == [(b, d) for b, d, _ in QUICK_SIZES]
    for row in saved["svmax"]:
        for key in ("ours_ms", "svd_ms", "speedup", "variance_ms", "covariance_ms"):
            assert math.isfinite(row[key]) and row[key] > 0
    tp = saved["throughput"]
    assert tp["pretrain_images_per_sec"] > 0 and tp["bare_images_per_sec"] > 0
    assert tp["ratio"] == pytest.approx(tp["pretrain_images_per_sec"] / tp["bare_images_per_sec"])
    assert {(r["last"], r["all"]) for r in saved["layers"]} == {("vicreg", "vicreg_all"), ("svmax", "svmax_all")}
    assert saved["gpu"] == "no GPU on this machine" or "device" in saved["gpu"]


def test_svmax_agrees_with_svd_and_rank_one_gradient_is_finite(quick: tuple[dict[str, Any], Path]) -> None:
    res, _ = quick
    for row in res["svmax"]:
        assert row["rel_diff"] <= AGREEMENT_TOL
        assert row["rel_diff"] == pytest.approx(abs(row["ours_value"] - row["svd_value"]) / row["svd_value"])
    assert res["svmax_rank_one"]["grad_finite"] is True


def test_targets_are_honest_and_listed(quick: tuple[dict[str, Any], Path]) -> None:
    res, out = quick
    names = set(res["targets"])
    assert {"pretrain_throughput_ratio", "layers_ratio_vicreg_all_vs_vicreg",
            "layers_ratio_svmax_all_vs_svmax"} <= names
    assert sum(n.startswith("svmax_speedup_") for n in names) == len(QUICK_SIZES)
    assert sum(n.startswith("svmax_agreement_") for n in names) == len(QUICK_SIZES)
    md = (out / "BENCH.md").read_text()
    for name, t in res["targets"].items():
        assert set(t) == {"value", "target", "op", "met"}
        assert t["met"] is OPS[t["op"]](t["value"], t["target"])
        line = next(line for line in md.splitlines() if line.startswith(f"- {name}:"))
        assert line.endswith(": met") if t["met"] else line.endswith("**NOT met**")


def test_module_runs_as_a_command(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    proc = subprocess.run([sys.executable, "-m", "embreg.bench", "--quick", "--threads", "1", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "[bench] wrote" in proc.stderr
    assert json.loads((out / "bench.json").read_text())["targets"]
    assert (out / "BENCH.md").read_text().startswith("# Benchmark")


@pytest.mark.parametrize("profile", ["cifar10", "imagenet"])
def test_gpu_setting_runs_fp32_and_bf16_small_on_cpu(profile):
    """The GPU measurement's code path, run tiny on the CPU: both precisions, the profile's
    photometric augmentation included, each with its own config (bf16 really is bf16)."""
    from embreg.bench import gpu_setting

    extra = ["optim.batch_size=4", "backbone.projector=[16,16]", "dataset.image_size=32"]
    out = gpu_setting(profile, 1, 1, torch.Generator().manual_seed(0), device="cpu", extra=extra)
    assert out["batch"] == 4 and out["image_size"] == 32
    for name in ("fp32", "bf16"):
        assert out[name]["images_per_sec"] > 0 and out[name]["peak_memory_mb"] > 0
