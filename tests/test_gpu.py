"""What only a GPU can show (marked ``gpu``; skipped without CUDA, run by the prepared GPU check):
resume mid-run on CUDA ends where an uninterrupted run does, bf16 autocast really runs the network
in bf16 on the GPU, the augmentations on the GPU against the CPU's, the supervised reference's
from-scratch fine-tuning on the GPU, and the host syncs of one training step at the GPU profile's
real shapes (SVMax: the eigensolver's one check) and of a streamed batch's crops (none). The rules
among these that a CPU can check are CPU tests too (tests/test_gpu_rules.py,
tests/test_device_placement.py)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import embreg.pretrain as P
from embreg.bench.timing import counting_syncs, n_syncs
from embreg.data import AugmentSpec, LazyBatch, Normalizer, augment, load_split, two_views
from embreg.models import build_model
from embreg.optim import build_optimizer
from embreg.terms.spectral import uses_svd

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


def test_bf16_autocast_runs_the_network_in_bf16_on_the_gpu(smoke_cfg, tmp_path):
    """A forward hook on every convolution and linear layer records the dtypes they produce during
    pretraining: bf16 only under bf16, float32 only under fp32, on CUDA; both train finitely."""
    train = load_split(smoke_cfg().paths.data, "fashion_mnist", train=True)
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        cfg = smoke_cfg("objective=vicreg", "profile.device=cuda", f"pretrain.precision={precision}",
                        "pretrain.epochs=2")
        model, seen = _model(cfg), set()
        layers = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
        hooks = [m.register_forward_hook(lambda mod, a, out, s=seen: s.add((out.dtype, out.device.type))) for m in layers]
        hist = P.pretrain(cfg, model, train, tmp_path / f"{precision}.pt", progress=False)["history"]
        for h in hooks:
            h.remove()
        assert seen == {(dtype, "cuda")}, (precision, seen)
        assert all(math.isfinite(v) for h in hist for v in h.values())


def test_gpu_augmentations_equal_the_cpus():
    """The same generator draws the same parameters (on the CPU), applied on either device."""
    x = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    spec = AugmentSpec(saturation=0.2, hue=0.1, grayscale_prob=0.2, blur_prob=(1.0, 0.1), solarize_prob=(0.0, 0.2))
    norm = Normalizer([0.5] * 3, [0.25] * 3)
    cpu = two_views(x, spec, norm, torch.Generator().manual_seed(1))
    gpu = two_views(x.to(CUDA), spec, norm, torch.Generator().manual_seed(1))
    for a, b in zip(cpu, gpu, strict=True):
        torch.testing.assert_close(b.cpu(), a, rtol=0, atol=1e-4)


def test_supervised_reference_fine_tunes_from_scratch_on_the_gpu(smoke_cfg, monkeypatch):
    """Its 1% / 10% cells train a new network on the subset: built on the run's device, every
    parameter of every head-training loop (probe and fine-tuning) there."""
    import embreg.evaluate as E

    cfg = smoke_cfg("objective=supervised", "profile.device=cuda", "eval.semi_supervised=true")
    real_finetune, real_train_head, starts, trained = E.finetune, E.train_head, [], []

    def finetune(model, *args, **kwargs):
        starts.append({p.device.type for p in model.parameters()})
        return real_finetune(model, *args, **kwargs)

    def train_head(opt, *args, **kwargs):
        trained.append({p.device.type for g in opt.param_groups for p in g["params"]})
        return real_train_head(opt, *args, **kwargs)

    monkeypatch.setattr(E, "finetune", finetune)
    monkeypatch.setattr(E, "train_head", train_head)
    train = load_split(cfg.paths.data, "fashion_mnist", train=True)
    test = load_split(cfg.paths.data, "fashion_mnist", train=False)
    metrics, _ = E.evaluate_model(cfg, _model(cfg), train, test)
    assert starts == [{"cuda"}, {"cuda"}] and trained and all(t == {"cuda"} for t in trained)
    assert 0 <= metrics["semi_1pct_top1"] <= 100 and 0 <= metrics["semi_10pct_top1"] <= 100


# the fmnist_gpu profile's shapes: batch 256, projector 1024 (the default's), CIFAR stem, bf16
REAL_SHAPES = ("backbone.stem=cifar", "backbone.projector=[1024,1024,1024]", "optim.batch_size=256",
               "pretrain.precision=bf16", "profile.device=cuda")
# waits for the GPU per step, at most: SVMax one (the eigensolver's error check; both views in one
# call), its all-layer arm one per solver call (final + four stages), VICReg none
MAX_SYNCS = {"vicreg": 0, "svmax": 1, "svmax_all": 5}


@pytest.mark.parametrize("objective", sorted(MAX_SYNCS))
def test_host_syncs_of_one_step_at_the_real_shapes(smoke_cfg, objective):
    """One SSL step (train_step, backward, optimizer step; the batch already on the device; the
    logged-only terms off, as on 24 steps of 25), counted by sync debug mode at b = 256, d = 1024:
    the Gram / eigensolver path the real profile takes, not the SVD of a square toy shape."""
    cfg = smoke_cfg(f"objective={objective}", *REAL_SHAPES)
    assert not uses_svd(256, 1024)
    train = load_split(cfg.paths.data, "fashion_mnist", train=True)
    model = _model(cfg)
    opt = build_optimizer(model, cfg.optim)
    norm, gen = Normalizer(cfg.dataset.mean, cfg.dataset.std), torch.Generator().manual_seed(0)
    x = train.images[:256].to(CUDA)

    def step():
        loss, _ = P.train_step(model, x, None, cfg, norm, gen, monitor=False)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):  # warm-up: allocator, cuDNN autotuning, lazy initialisation
        step()
    with counting_syncs(CUDA) as caught:
        step()
    syncs = [str(w.message)[:160] for w in caught if "synchroniz" in str(w.message)]
    assert n_syncs(caught) <= MAX_SYNCS[objective], syncs


class StreamedImages:
    """Stands in for ``LazyImages`` (ImageNet): crops decoded on the CPU."""

    shape = torch.Size([64, 3, 64, 64])

    def aspect(self, idx: torch.Tensor) -> torch.Tensor:
        return torch.ones(len(idx))

    def crops(self, idx: torch.Tensor, theta: torch.Tensor, size: int) -> torch.Tensor:
        return torch.full((len(idx), 3, size, size), 100, dtype=torch.uint8)


def test_streamed_crops_reach_the_gpu_without_a_wait():
    norm, spec = Normalizer([0.5] * 3, [0.25] * 3), AugmentSpec(out_size=32)
    batch = LazyBatch(StreamedImages(), torch.arange(64), CUDA)
    augment(batch, spec, norm, torch.Generator().manual_seed(0))  # warm-up: the normalizer's statistics move once
    torch.cuda.synchronize()
    with counting_syncs(CUDA) as caught:
        view = augment(batch, spec, norm, torch.Generator().manual_seed(1))
    assert view.device.type == "cuda" and n_syncs(caught) == 0, [str(w.message)[:160] for w in caught]


def test_reading_the_logged_terms_waits_once():
    """The read every log_every steps: the flags go to the device without a wait (pinned), the
    values and flags come back in one."""
    from embreg.distributed import DistInfo
    from embreg.steplog import TermLog

    log = TermLog()
    for i in range(3):
        log.add({"loss": torch.tensor(float(i), device=CUDA), "svmax": torch.tensor(0.5, device=CUDA)})
    torch.cuda.synchronize()
    with counting_syncs(CUDA) as caught:
        values, flags = log.read(DistInfo(), [1.0, 0.0, 0.0])
    assert values == {"loss": [0.0, 1.0, 2.0], "svmax": [0.5] * 3} and flags == [1.0, 0.0, 0.0]
    assert n_syncs(caught) == 1, [str(w.message)[:160] for w in caught]
