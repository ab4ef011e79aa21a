"""What only a GPU can show (marked ``gpu``; skipped without CUDA, run by the prepared GPU check):
resume mid-run on CUDA ends where an uninterrupted run does, bf16 and fp32 steps, the augmentations
on the GPU against the CPU's, evaluation with the supervised reference's from-scratch fine-tuning,
and the host syncs of one training step."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import embreg.pretrain as P
from embreg.data import AugmentSpec, Normalizer, load_split, two_views
from embreg.models import build_model
from embreg.optim import build_optimizer

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
CUDA = torch.device("cuda")


def _model(cfg):
    torch.manual_seed(cfg.seed)
    return build_model(cfg.backbone, cfg.dataset.in_channels, cfg.dataset.num_classes).to(CUDA)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_resume_mid_epoch_on_cuda_ends_where_an_uninterrupted_run_does(smoke_cfg, tmp_path, monkeypatch, precision):
    cfg = smoke_cfg("objective=svmax", "profile.device=cuda", f"pretrain.precision={precision}",
                    "pretrain.epochs=2", "pretrain.steps_per_epoch=4", "runtime.checkpoint_every_s=0")
    train = load_split(cfg.paths.data, "fashion_mnist", train=True)
    straight = _model(cfg)
    res = P.pretrain(cfg, straight, train, tmp_path / "a.pt", progress=False)
    real_save, saves = P.save_checkpoint, []

    def save_then_die(path, state):  # dies after the checkpoint of step 3 (mid-epoch)
        real_save(path, state)
        saves.append(state["step"])
        if state["step"] == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(P, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        P.pretrain(cfg, _model(cfg), train, tmp_path / "b.pt", progress=False)
    monkeypatch.setattr(P, "save_checkpoint", real_save)
    resumed = _model(cfg)
    res2 = P.pretrain(cfg, resumed, train, tmp_path / "b.pt", progress=False)
    assert res2["resumed_at"] == [3]
    tol = {"fp32": 1e-4, "bf16": 2e-2}[precision]  # cuDNN picks kernels per process: not bit for bit
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        if a.is_floating_point():
            torch.testing.assert_close(a, b, rtol=tol, atol=tol, msg=k)
    for h1, h2 in zip(res["history"], res2["history"], strict=True):
        assert h1["loss"] == pytest.approx(h2["loss"], rel=tol)


def test_bf16_and_fp32_steps_train(smoke_cfg, tmp_path):
    train = load_split(smoke_cfg().paths.data, "fashion_mnist", train=True)
    losses = {}
    for precision in ("fp32", "bf16"):
        cfg = smoke_cfg("objective=vicreg", "profile.device=cuda", f"pretrain.precision={precision}",
                        "pretrain.epochs=2")
        hist = P.pretrain(cfg, _model(cfg), train, tmp_path / f"{precision}.pt", progress=False)["history"]
        assert all(math.isfinite(v) for h in hist for v in h.values())
        losses[precision] = hist[-1]["loss"]
    assert losses["bf16"] != losses["fp32"] and losses["bf16"] == pytest.approx(losses["fp32"], rel=0.2)


def test_gpu_augmentations_equal_the_cpus():
    """The same generator draws the same parameters (on the CPU), applied on either device."""
    x = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    spec = AugmentSpec(saturation=0.2, hue=0.1, grayscale_prob=0.2, blur_prob=(1.0, 0.1), solarize_prob=(0.0, 0.2))
    norm = Normalizer([0.5] * 3, [0.25] * 3)
    cpu = two_views(x, spec, norm, torch.Generator().manual_seed(1))
    gpu = two_views(x.to(CUDA), spec, norm, torch.Generator().manual_seed(1))
    for a, b in zip(cpu, gpu, strict=True):
        torch.testing.assert_close(b.cpu(), a, rtol=0, atol=1e-4)


def test_supervised_reference_fine_tunes_from_scratch_on_the_gpu(smoke_cfg):
    """Its 1% / 10% cells train a new network on the subset: built on the run's device."""
    from embreg.evaluate import evaluate_model

    cfg = smoke_cfg("objective=supervised", "profile.device=cuda")
    train = load_split(cfg.paths.data, "fashion_mnist", train=True)
    test = load_split(cfg.paths.data, "fashion_mnist", train=False)
    metrics, _ = evaluate_model(cfg, _model(cfg), train, test)
    assert 0 <= metrics["semi_1pct_top1"] <= 100 and 0 <= metrics["semi_10pct_top1"] <= 100


@pytest.mark.parametrize("objective", ["vicreg", "svmax"])
def test_host_syncs_of_one_step(smoke_cfg, objective):
    """Target: at most 2 waits for the GPU per SSL step (train_step, backward, optimizer step),
    the batch already on the device; the logged terms are read elsewhere, every few steps."""
    cfg = smoke_cfg(f"objective={objective}", "profile.device=cuda", "pretrain.precision=bf16", "optim.batch_size=64")
    train = load_split(cfg.paths.data, "fashion_mnist", train=True)
    model = _model(cfg)
    opt = build_optimizer(model, cfg.optim)
    norm, gen = Normalizer(cfg.dataset.mean, cfg.dataset.std), torch.Generator().manual_seed(0)
    x = train.images[:64].to(CUDA)

    def step():
        loss, _ = P.train_step(model, x, None, cfg, norm, gen, monitor=False)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):  # warm-up: allocator, cuDNN autotuning, lazy initialisation
        step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) <= 2, [str(w.message)[:120] for w in syncs]
