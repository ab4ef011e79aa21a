"""The one-GPU profile (conf/profile/fmnist_gpu.yaml) end to end on the CPU at smoke size: the
default's grid with semi-supervised fine-tuning on, the supervised reference's 1% / 10% cells
trained from random init on the subsets, and the tables with their semi-supervised columns."""

from __future__ import annotations

import json

import pytest

from embreg.params import compose_run
from tests.conftest import repro_copy

# one ablation, no sensitivity points: the ablations and their sweeps are the default's (the next test)
# and run in the default's own tests; here they would only add CPU runs to the suite. covariance has
# an ssl arm of each space and the references, whose semi-supervised cells this test reads
SMOKE = ["pretrain.epochs=1", "pretrain.steps_per_epoch=1", "optim.batch_size=8", "backbone.projector=[32,32]",
         "profile.device=cpu", "profile.seeds=[0,1]", "profile.sweep_seeds=[]", "profile.ablations=[covariance]",
         "eval.probe_epochs=1",
         "eval.finetune_epochs=[1,1]", "eval.finetune_batch_size=16", "eval.feature_batch_size=256",
         "eval.spectrum_size=8", "pretrain.monitor_every=1", "runtime.progress=false"]


def test_profile_is_the_defaults_grid_on_a_gpu():
    gpu, cpu = compose_run("fmnist_gpu"), compose_run("default")
    assert (gpu.profile.device, gpu.pretrain.precision, gpu.backbone.stem, gpu.optim.batch_size) == \
        ("cuda", "bf16", "cifar", 256)
    # A-C: the default's first three ablations (D on one GPU is fmnist_gpu_hosts's)
    assert gpu.profile.ablations == cpu.profile.ablations[:3] == ["anticollapse", "covariance", "layers"]
    assert compose_run("fmnist_gpu_hosts").profile.ablations == ["hosts"] and "hosts" in cpu.profile.ablations
    assert gpu.profile.baselines == cpu.profile.baselines
    assert gpu.profile.seeds == [0, 1, 2] and gpu.eval.semi_supervised and gpu.eval.finetune_epochs == [20, 20]
    assert gpu.pretrain.supervised_epochs is None  # the supervised reference sees the arms' images
    assert gpu.paths.results == "results/fmnist_gpu"


@pytest.mark.slow
def test_profile_repro_on_the_cpu_writes_the_semi_supervised_tables(tmp_path, fmnist_mirror):
    repo = repro_copy(tmp_path / "repo", fmnist_mirror, profile="fmnist_gpu", overrides=SMOKE)
    res = repo / "results" / "fmnist_gpu"
    summary = json.loads((res / "summary.json").read_text())["arms"]
    for arm in ("vicreg", "inv_only", "supervised"):
        for key in ("semi_1pct_top1", "semi_10pct_top1"):
            cell = summary[arm]["metrics"][key]
            assert cell["n"] == 2 and 0 <= cell["mean"] <= 100, (arm, key)
    assert "semi_1pct_top1" not in summary["random_init"]["metrics"]  # its column is the supervised row's
    header = (res / "tables" / "main.md").read_text().splitlines()[0]
    assert "1% top-1" in header and "10% top-1" in header
