"""The GPU path's rules that a CPU can check: resume reads a checkpoint to the CPU whatever the
model's device, evaluation on one rank uses plain BatchNorm, a run's threads follow its CPU share,
the logged terms are read every few steps (a non-finite loss still names its step), both views'
SVMax spectra come from one eigensolver call, SVMax off the CPU reads nothing back at the GPU
profile's real shapes (which take the Gram / eigensolver path), bf16 autocast really runs the
network in bf16, the training data's GPU budget is shared by the runs on a GPU, the raw-pixel
reference runs on the run's device, streamed crops reach the device by a non-blocking copy, and
retrieval skips a split without a gallery."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import embreg.pretrain as P
from embreg.data import Split, load_split
from embreg.evaluate import local_batchnorm
from embreg.metrics import recall_at_k, retrieval
from embreg.models import build_model
from embreg.optim import build_optimizer
from embreg.terms import spectral as R
from embreg.terms.svmax import svmax_loss


def _model(cfg):
    torch.manual_seed(cfg.seed)
    return build_model(cfg.backbone, cfg.dataset.in_channels, cfg.dataset.num_classes)


@pytest.mark.filterwarnings("ignore:.*meta parameter:UserWarning")
def test_resume_reads_the_checkpoint_to_the_cpu_whatever_the_models_device(smoke_cfg, tmp_path):
    """On a GPU the checkpoint used to be mapped to the model's device, which put the CPU
    generator's state there (``TypeError: RNG state must be a torch.ByteTensor``) and the
    sampling order with it. A model on the meta device stands in for the GPU here."""
    cfg = smoke_cfg("objective=vicreg", "pretrain.epochs=1")
    train = load_split(cfg.paths.data, "fashion_mnist", train=True)
    P.pretrain(cfg, _model(cfg), train, tmp_path / "a.pt", progress=False)
    model = _model(cfg).to("meta")
    gen = torch.Generator()
    st = P.load_state(tmp_path / "a.pt", model, build_optimizer(model, cfg.optim), gen, len(train))
    assert st.step == 2 and st.stream.perm.device.type == "cpu"
    saved = torch.load(tmp_path / "a.pt", weights_only=False)
    assert torch.equal(gen.get_state(), saved["generator"]) and st.counts == saved["counts"]


def test_evaluation_on_one_rank_swaps_sync_batchnorm_for_batchnorm():
    """Rank 0 fine-tunes alone: a SyncBatchNorm in training mode would wait for the other ranks.
    The swap keeps weights, statistics and outputs (train and eval mode)."""
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Sequential(nn.BatchNorm2d(4)))
    x = torch.randn(8, 1, 6, 6)
    plain(x)  # running statistics that differ from the initial ones
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(plain.__class__(*[m for m in plain]))
    local = local_batchnorm(synced)
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in local.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in local.modules()) == 2
    ref = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Sequential(nn.BatchNorm2d(4)))
    ref.load_state_dict(plain.state_dict())
    for mode in (False, True):
        local.train(mode)
        ref.train(mode)
        torch.testing.assert_close(local(x), ref(x))


def test_run_threads_follow_the_cpu_share(monkeypatch):
    from embreg.run import cpu_share

    assert cpu_share(3) == 3  # the launcher's share (local.threads_per_job, slurm.cpus_per_task)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 5}, raising=False)
    assert cpu_share(0) == 2  # a hand run: the cores it may run on, not every core


def test_decode_threads_follow_the_runs_threads():
    from embreg.data.imagefolder import default_threads

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert default_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_logged_terms_read_every_few_steps_give_the_same_history(smoke_cfg, tmp_path):
    """runtime.log_every changes when the device is waited for, never the history (every step's
    terms are folded in, in order); pretrain.monitor_every spaces out the logging-only terms."""
    train = load_split(smoke_cfg().paths.data, "fashion_mnist", train=True)
    hist = {}
    for every in (1, 3, 50):
        cfg = smoke_cfg("objective=svmax", "pretrain.epochs=2", "pretrain.steps_per_epoch=3",
                        f"runtime.log_every={every}")
        hist[every] = P.pretrain(cfg, _model(cfg), train, tmp_path / f"{every}.pt", progress=False)["history"]
    assert hist[1] == hist[3] == hist[50]
    cfg = smoke_cfg("objective=svmax", "pretrain.epochs=2", "pretrain.steps_per_epoch=3", "pretrain.monitor_every=2")
    spaced = P.pretrain(cfg, _model(cfg), train, tmp_path / "m.pt", progress=False)["history"]
    # the trained terms are every step's; variance (logging only) is the mean of steps 0 and 2, then 4
    assert [h["loss"] for h in spaced] == [h["loss"] for h in hist[1]]
    assert spaced[0]["variance"] != hist[1][0]["variance"] and math.isfinite(spaced[1]["variance"])


def test_a_nan_loss_names_its_step_though_it_is_read_later(smoke_cfg, tmp_path, monkeypatch):
    cfg = smoke_cfg("objective=vicreg", "pretrain.epochs=2", "pretrain.steps_per_epoch=4")
    train = load_split(cfg.paths.data, "fashion_mnist", train=True)
    real_step, calls = P.train_step, []

    def nan_at_step_five(*args, **kwargs):
        loss, terms = real_step(*args, **kwargs)
        calls.append(1)
        if len(calls) == 6:  # step 5: epoch 1, step 1
            terms = {**terms, "loss": torch.tensor(float("nan"))}
        return loss, terms

    monkeypatch.setattr(P, "train_step", nan_at_step_five)
    with pytest.raises(P.DivergedError, match=r"loss is nan at epoch 1 step 1$"):
        P.pretrain(cfg, _model(cfg), train, tmp_path / "a.pt", progress=False)
    assert len(calls) == 8  # read at the epoch's end: the steps after it ran, the run still stops


def test_an_infinite_loss_is_named_before_the_eigensolver_fails_on_its_nan_weights(smoke_cfg, tmp_path):
    """Step 0's loss is inf (a huge invariance coefficient), its update makes the weights NaN and
    step 1's logged SVMax fails in the eigensolver, all before the first read: the run names step 0."""
    cfg = smoke_cfg("objective=inv_only", "objective.terms.invariance=1e300", "pretrain.epochs=1",
                    "pretrain.steps_per_epoch=4")
    train = load_split(cfg.paths.data, "fashion_mnist", train=True)
    with pytest.raises(P.DivergedError, match=r"^loss is inf at epoch 0 step 0$"):
        P.pretrain(cfg, _model(cfg), train, tmp_path / "inf.pt", progress=False)


def test_both_views_spectra_in_one_call_equal_each_alone():
    """(2, b, d) -> (2,): values and gradients as two separate calls, on the float32 path and
    when one matrix needs float64 (then both take it)."""
    g = torch.Generator().manual_seed(0)
    healthy = torch.randn(2, 16, 64, generator=g)
    collapsed = torch.randn(1, 64, generator=g).expand(16, 64) + 1e-3 * torch.randn(16, 64, generator=g)
    for stack in (healthy, torch.stack([healthy[0], collapsed])):
        x = stack.clone().requires_grad_()
        both = R.mean_singular_value(x)
        both.sum().backward()
        for i in range(2):
            xi = stack[i].clone().requires_grad_()
            alone = R.mean_singular_value(xi)
            alone.backward()
            torch.testing.assert_close(both[i], alone, rtol=1e-5, atol=0)
            torch.testing.assert_close(x.grad[i], xi.grad, rtol=1e-3, atol=1e-6)
    assert R.spectrum_precision(torch.nn.functional.normalize(torch.stack([healthy[0], collapsed]), dim=-1)) == "float64"
    assert svmax_loss(healthy).shape == (2,)


def test_retrieval_without_a_gallery_is_left_out_and_recall_needs_two_samples():
    """A class subset of a dataset can leave the held-out classes with fewer than two test images."""
    feats = {"projector": torch.randn(6, 4), "backbone": torch.randn(6, 8)}
    labels = torch.tensor([0, 1, 2, 0, 1, 5])  # one image of the held-out half (classes 5-9)
    assert retrieval(feats, labels, 10) == {}
    labels = torch.tensor([0, 1, 5, 6, 7, 5])
    out = retrieval(feats, labels, 10)
    assert set(out) == {f"{p}recall_at_{k}" for p in ("", "backbone_") for k in (1, 2, 4, 8)}
    with pytest.raises(ValueError, match="at least two samples"):
        recall_at_k(torch.randn(1, 4), torch.tensor([0]))


def test_training_data_moves_to_the_gpu_only_when_it_fits_its_share():
    split = Split(images=torch.zeros(4, 1, 2, 2, dtype=torch.uint8), labels=torch.zeros(4, dtype=torch.long))
    images, labels = P._on_device(split, torch.device("cpu"))
    assert images is split.images and labels is split.labels
    assert P.device_data_budget(1) == 2 << 30 and P.device_data_budget(3) == (2 << 30) // 3
    assert P.device_data_budget(0) == 2 << 30  # a hand run: the GPU is its own
    # 1 GiB of images: within one run's 2 GiB, over each of three runs' share (no copy is attempted)
    big = Split(images=torch.zeros(1, dtype=torch.uint8).expand(1 << 30), labels=torch.zeros(1, dtype=torch.long))
    assert big.images.nbytes == 1 << 30  # what the rule reads (the view itself holds one byte)
    images, _ = P._on_device(big, torch.device("cuda"), jobs_per_gpu=3)
    assert images is big.images


def test_the_local_launcher_tells_each_run_how_many_share_its_gpu():
    from embreg.sweep.commands import lane_overrides
    from embreg.sweep.resources import Lane

    assert "runtime.jobs_per_gpu=3" in lane_overrides(Lane("1", 3), 0, 1)
    assert not any(o.startswith("runtime.jobs_per_gpu") for o in lane_overrides(Lane(None, 2), 0, 1))


def _tap_shapes(cfg) -> list[tuple[int, int]]:
    model = build_model(cfg.backbone, cfg.dataset.in_channels, cfg.dataset.num_classes)
    b = cfg.optim.batch_size
    return [(b, model.embed_dim)] + [(b, c) for c in model.backbone.tap_dims.values()]


def test_svmax_off_the_cpu_reads_nothing_back_at_the_gpu_profiles_shapes():
    """On the meta device any read of a value or copy to the CPU raises: SVMax's forward and
    backward there, at the fmnist_gpu shapes (b = 256, the final d = 1024 and each stage's tap),
    prove that a GPU step waits for nothing but the solver's own error check (one per call).
    The final embedding takes the Gram / eigensolver path, as do three of the four stages; the
    square layer3 tap (256 x 256) takes torch's SVD (``uses_svd``)."""
    from embreg.params import compose_run

    shapes = _tap_shapes(compose_run("fmnist_gpu", ["profile.device=cpu"]))
    assert shapes == [(256, 1024), (256, 64), (256, 128), (256, 256), (256, 512)]
    assert [R.uses_svd(b, d) for b, d in shapes] == [False, False, False, True, False]
    for b, d in shapes:
        e = torch.empty(2, b, d, device="meta", requires_grad=True)
        value = R.mean_singular_value(e)
        value.sum().backward()
        assert value.shape == (2,) and e.grad.shape == (2, b, d) and e.grad.device.type == "meta"
        # off the CPU the precision is chosen without a read
        assert R.spectrum_precision(e.detach()) == ("svd" if R.uses_svd(b, d) else "float64")


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp32", torch.float32)])
def test_autocast_runs_the_network_in_the_profiles_precision(smoke_cfg, precision, dtype):
    """A forward hook on every convolution and linear layer records its output dtype: bf16
    throughout under bf16 autocast, float32 otherwise; the loss terms still get float32."""
    from embreg.data import Normalizer

    cfg = smoke_cfg("objective=svmax", f"pretrain.precision={precision}")
    model = _model(cfg)
    seen: set[torch.dtype] = set()
    layers = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    hooks = [m.register_forward_hook(lambda mod, args, out: seen.add(out.dtype)) for m in layers]
    x = load_split(cfg.paths.data, "fashion_mnist", train=True).images[:32]
    loss, terms = P.train_step(model, x, None, cfg, Normalizer(cfg.dataset.mean, cfg.dataset.std),
                               torch.Generator().manual_seed(0))
    for h in hooks:
        h.remove()
    assert seen == {dtype} and loss.dtype == torch.float32 and terms["svmax"].dtype == torch.float32
