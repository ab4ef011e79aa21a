"""`embreg bench --quick`: the results' structure, SVMax against the svd reference, and honest
targets (``met`` is exactly value <op> target, or None with the reason when not measured;
BENCH.md lists each); the GPU part's code run tiny on the CPU."""

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
from embreg.bench import gpu as bench_gpu
from embreg.bench.targets import eval_fraction

REPO = Path(__file__).resolve().parents[1]
OPS = {">=": lambda v, t: v >= t, "<=": lambda v, t: v <= t, "==": lambda v, t: v == t}
GPU_TARGETS = {"gpu_step_over_bare", "gpu_loop_over_step", "gpu_bf16_over_fp32_cifar10", "gpu_bf16_over_fp32_imagenet",
               "gpu_svmax_over_vicreg_step", "gpu_eval_fraction", "gpu_syncs_per_step",
               *(f"gpu_svmax_over_svdvals_{b}x{d}" for b, d, _ in QUICK_SIZES)}


def check_targets(res: dict[str, Any], out: Path) -> None:
    """Each target honest (met is exactly value <op> target; not measured: no value, met None,
    a reason) and listed in BENCH.md with its verdict at the end of its line."""
    md = (out / "BENCH.md").read_text()
    for name, t in res["targets"].items():
        line = next(line for line in md.splitlines() if line.startswith(f"- {name}:"))
        if t["met"] is None:
            assert set(t) == {"value", "target", "op", "met", "reason"} and t["value"] is None and t["reason"]
            assert line.endswith(f"not measured ({t['reason']})")
            continue
        assert set(t) == {"value", "target", "op", "met"}
        assert t["met"] is OPS[t["op"]](t["value"], t["target"])
        assert line.endswith(": met") if t["met"] else line.endswith("**NOT met**")


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
    assert tp["loss_ms"] > 0 and tp["loss_unmonitored_ms"] > 0  # the logging-only terms' cost, measured
    assert tp["monitor_ms"] == pytest.approx(tp["loss_ms"] - tp["loss_unmonitored_ms"])
    assert f"{tp['monitor_ms']:.1f} ms on a step where `pretrain.monitor_every` falls" in (out / "BENCH.md").read_text()
    assert {(r["last"], r["all"]) for r in saved["layers"]} == {("vicreg", "vicreg_all"), ("svmax", "svmax_all")}
    assert saved["gpu"] == "no GPU on this machine" or "device" in saved["gpu"]
    assert saved["gpu_eval"] == "needs a finished GPU run: --gpu-run-dir"


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
    assert not any("mfu" in n for n in names)  # the CPU MFU target is retired: a figure only
    assert "MFU at one thread" in (out / "BENCH.md").read_text()
    assert GPU_TARGETS <= names
    if not torch.cuda.is_available():  # every GPU target is there, not measured, and says why
        assert {res["targets"][n]["reason"] for n in GPU_TARGETS - {"gpu_eval_fraction"}} == {"no GPU on this machine"}
    check_targets(res, out)


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
    """The GPU measurement's code path, run tiny on the CPU: both precisions, the library's step
    and the bare reference, the profile's photometric augmentation included, each with its own
    config (bf16 really is bf16)."""
    from embreg.bench import gpu_setting

    extra = ["optim.batch_size=4", "backbone.projector=[16,16]", "dataset.image_size=8"]
    out = gpu_setting(profile, 1, 1, torch.Generator().manual_seed(0), device="cpu", extra=extra)
    assert out["batch"] == 4 and out["image_size"] == 8
    for name in ("fp32", "bf16"):
        for key in ("images_per_sec", "peak_memory_mb", "bare_images_per_sec", "bare_peak_memory_mb"):
            assert out[name][key] > 0


def fake_run(root: Path, name: str, device: str, pretrain_s: float, eval_s: float) -> None:
    (root / name).mkdir(parents=True)
    (root / name / "metrics.json").write_text(json.dumps({"pretrain_seconds": pretrain_s, "eval_seconds": eval_s}))
    (root / name / "config.yaml").write_text(f"profile:\n  device: {device}\n")


def test_eval_fraction_reads_the_gpu_runs_only(tmp_path: Path) -> None:
    fake_run(tmp_path, "runs/vicreg/seed0", "cuda", 90.0, 10.0)
    fake_run(tmp_path, "runs/svmax/seed0", "cuda:0", 50.0, 30.0)
    fake_run(tmp_path, "runs/cpu_one/seed0", "cpu", 1.0, 99.0)
    ev = eval_fraction(tmp_path)
    assert ev["runs"] == 2 and ev["fraction"] == pytest.approx(40.0 / 180.0)
    assert "no GPU run" in eval_fraction(tmp_path / "runs" / "cpu_one")
    assert eval_fraction(None) == "needs a finished GPU run: --gpu-run-dir"


def test_gpu_part_runs_tiny_on_cpu(tmp_path: Path) -> None:
    """``--gpu-only --device cpu --quick``: every GPU part's code on the CPU, every GPU target
    measured (the eval fraction from a run directory), bench.json and BENCH.md written."""
    fake_run(tmp_path / "runs", "vicreg/seed0", "cuda", 60.0, 20.0)
    res = run_bench(tmp_path / "out", quick=True, threads=1, gpu_only=True, device="cpu", gpu_run_dir=tmp_path / "runs")
    gpu = res["gpu"]
    assert "svmax" not in res and set(res["targets"]) == GPU_TARGETS
    for name in GPU_TARGETS:
        t = res["targets"][name]
        assert t["met"] is not None and math.isfinite(t["value"]), (name, t)
    assert res["targets"]["gpu_eval_fraction"]["value"] == pytest.approx(0.25)
    assert gpu["cifar10"]["svmax"]["ms_per_step"] > 0 and gpu["loop"]["steps"] == bench_gpu.QUICK.loop_steps
    assert gpu["syncs"]["per_step"] == 0 and gpu["syncs"]["calibration"] == 0  # a CPU never syncs with a device
    assert gpu["syncs"]["profile"] == "fmnist_gpu" and gpu["syncs"]["svmax_all"]["loop_per_step"] == 0
    assert [(r["b"], r["d"]) for r in gpu["syncs"]["term"]] == [(4, 16), (4, 64), (4, 128), (4, 256), (4, 512)]
    assert [(r["b"], r["d"]) for r in gpu["svd"]] == [(b, d) for b, d, _ in QUICK_SIZES]
    assert all(r["rel_diff"] <= AGREEMENT_TOL for r in gpu["svd"])
    saved = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert saved["targets"] == res["targets"]
    check_targets(res, tmp_path / "out")


def test_a_failed_gpu_part_is_recorded_and_the_others_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each part in its own try: one that raises is a "failed (...)" entry, its targets are not
    measured with that reason, the later parts still run, and ``on_part`` sees every part."""
    setting = {"batch": 4, **{p: {"images_per_sec": 2.0, "bare_images_per_sec": 2.0, "ms_per_step": 1.0}
                             for p in ("fp32", "bf16", "svmax")}}
    monkeypatch.setattr(bench_gpu, "gpu_setting", lambda *a, **k: setting)
    monkeypatch.setattr(bench_gpu, "loop_vs_step", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom\nmore")))
    monkeypatch.setattr(bench_gpu, "syncs_per_step", lambda *a, **k: {"per_step": 3.0})
    monkeypatch.setattr(bench_gpu, "svd_rows", lambda shapes, *a, **k: [{"b": b, "d": d, "speedup": 2.5} for b, d in shapes])
    seen: list[list[str]] = []
    gpu = bench_gpu.gpu_section(bench_gpu.QUICK, 1, torch.Generator(), "cpu", lambda g: seen.append(list(g)))
    assert gpu["loop"] == "failed (RuntimeError: boom)" and gpu["imagenet"] is setting
    assert [s[-1] for s in seen] == ["cifar10", "loop", "syncs", "svd", "imagenet"]
    from embreg.bench.targets import gpu_targets

    t = gpu_targets(gpu, "needs a run", bench_gpu.QUICK.shapes)
    assert t["gpu_loop_over_step"]["met"] is None and t["gpu_loop_over_step"]["reason"] == gpu["loop"]
    assert t["gpu_syncs_per_step"]["met"] is False and t["gpu_step_over_bare"]["met"] is True
    assert t["gpu_bf16_over_fp32_imagenet"]["value"] == 1.0 and t["gpu_svmax_over_vicreg_step"]["value"] == 1.0
    assert t["gpu_svmax_over_svdvals_32x64"]["met"] is True and t["gpu_eval_fraction"]["reason"] == "needs a run"


def test_sync_counting_counts_every_sync_warning() -> None:
    """Repeated identical warnings all count (filter "always"); other warnings do not."""
    import warnings

    from embreg.bench.timing import counting_syncs, n_syncs

    with counting_syncs(torch.device("cpu")) as caught:
        for _ in range(3):
            warnings.warn("called a synchronizing CUDA operation", UserWarning, stacklevel=1)
        warnings.warn("something else", UserWarning, stacklevel=1)
    assert n_syncs(caught) == 3


def test_bare_reference_is_the_library_network_built_by_torchvision() -> None:
    """The bench's own network has the library model's backbone and projector: the same
    parameter shapes (less the supervised head) and outputs of the same size."""
    from embreg.bench.steps import bare_model, library_model
    from embreg.params import compose_run

    for profile in ("default", "cifar10"):
        cfg = compose_run(profile, ["backbone.projector=[32,16]", "profile.device=cpu"])
        lib, bare = library_model(cfg), bare_model(cfg)
        lib_shapes = sorted(tuple(p.shape) for n, p in lib.named_parameters() if not n.startswith("head."))
        assert lib_shapes == sorted(tuple(p.shape) for p in bare.parameters())
        x = torch.randn(2, cfg.dataset.in_channels, 32, 32)
        assert bare(x).shape == lib(x)[0].shape == (2, 16)


def test_syncs_are_counted_at_the_grids_shapes_on_realistic_input() -> None:
    """The sync part runs the grid's profile (b = 256, d = 1024; its stage taps), where SVMax
    takes the Gram / eigensolver path (but for the square layer3 tap), on Fashion-MNIST-like
    images (a dark field, bright class shapes), and SVMax's term alone on a low-rank-plus-noise
    embedding as ill-conditioned as a real run's."""
    from embreg.bench.svmax_gpu import (
        eig_ratio,
        low_rank_embedding,
        real_shapes,
        structured_images,
        sync_config,
    )
    from embreg.terms.spectral import spectrum_precision, uses_svd

    cfg = sync_config(10, "cpu", "svmax")
    assert (cfg.optim.batch_size, cfg.pretrain.precision, cfg.pretrain.monitor_every) == (256, "bf16", 25)
    shapes = real_shapes(cfg)
    assert shapes == [(256, 1024), (256, 64), (256, 128), (256, 256), (256, 512)]
    assert [uses_svd(b, d) for b, d in shapes] == [False, False, False, True, False]
    x = structured_images(cfg, 20, torch.Generator().manual_seed(0))
    assert x.shape == (20, 1, 28, 28) and x.dtype == torch.uint8
    dark = (x < 40).float().mean()
    assert 0.4 < dark < 0.9 and x.max() > 150  # mostly background, a few bright shapes: not uniform noise
    assert not torch.equal(x[0] > 100, x[1] > 100)  # the classes' shapes differ
    gen = torch.Generator().manual_seed(0)
    for b, d in shapes:
        if uses_svd(b, d):
            continue
        e = low_rank_embedding(b, d, gen)
        assert 1e-7 < eig_ratio(e) < 1e-4, (b, d)
        assert spectrum_precision(torch.nn.functional.normalize(e, dim=-1)) == "float64"
