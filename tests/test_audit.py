"""`embreg collapse` (embreg.audit) on real saved checkpoints: a run of this suite and plain
torchvision ResNet state_dict files, against the metrics computed by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision

from embreg.audit import CheckpointError, audit, main
from embreg.data import Normalizer, load_split
from embreg.metrics import collapse_metrics
from embreg.registry import UnknownNameError
from embreg.run import run_one
from embreg.rundir import checkpoint_path, run_dir

METRICS = ("s_mu", "s_mu_lower", "s_mu_upper", "s_mu_score", "rankme", "frac_dead_dims", "mean_abs_corr")


@pytest.fixture(scope="module")
def trained(prepared_data, tmp_path_factory):
    """One finished smoke run of the suite (vicreg: a projector, so five layers)."""
    from embreg.params import compose_run

    tmp = tmp_path_factory.mktemp("audit")
    cfg = compose_run("smoke", [f"paths.data={prepared_data}", f"paths.results={tmp}/results",
                                f"paths.checkpoints={tmp}/ckpt", "runtime.progress=false", "objective=vicreg",
                                "eval.semi_supervised=false"])
    assert run_one(cfg)["state"] == "done"
    return cfg


def test_a_suite_run_audits_to_the_numbers_its_evaluation_recorded(trained):
    """The whole test split through the checkpoint gives the collapse metrics the run itself
    wrote (metrics.json), layer by layer: same weights, same features, same formulas."""
    cfg = trained
    report = audit(checkpoint_path(cfg), "fashion_mnist", Path(cfg.paths.data))
    recorded = json.loads((run_dir(cfg) / "metrics.json").read_text())["collapse"]
    assert report["source"] == "suite run" and report["backbone"] == "resnet18" and report["stem"] == "imagenet"
    assert list(report["layers"]) == ["layer1", "layer2", "layer3", "layer4", "projector"]
    n_test = len(load_split(cfg.paths.data, "fashion_mnist", train=False))
    for layer, m in report["layers"].items():
        want = recorded["backbone" if layer == "layer4" else layer]
        assert m["n"] == n_test and m["dim"] == want["dim"]
        for key in METRICS:
            assert m[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), (layer, key)


def test_the_command_reads_a_run_directory_and_writes_json_and_markdown(trained, tmp_path, capsys):
    out = tmp_path / "audit" / "vicreg"
    assert main([str(run_dir(trained)), "--layers", "layer4,projector", "--samples", "50", "--out", str(out)]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert list(report["layers"]) == ["layer4", "projector"] and report["n"] == 50
    assert all(m["n"] == 50 for m in report["layers"].values())
    md = out.with_suffix(".md").read_text()
    assert "| layer4 | 50 | 512 |" in md and "| projector | 50 | 64 |" in md
    assert md in capsys.readouterr().out


def _torchvision_file(tmp_path: Path, net: torch.nn.Module, name: str) -> Path:
    path = tmp_path / f"{name}.pth"
    torch.save(net.state_dict(), path)
    return path


def test_a_torchvision_resnet_state_dict_on_grey_images(prepared_data, tmp_path):
    """A plain torchvision ResNet-18 (3 channels, its fc kept in the file): the grey images are
    standardized and repeated over three channels; each stage's metrics equal those of the
    torchvision model's own pooled features, computed here by hand."""
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None, num_classes=7)
    net.eval()
    path = _torchvision_file(tmp_path, net, "resnet18")
    report = audit(path, "fashion_mnist", prepared_data, samples=64)
    assert report["source"] == "torchvision state_dict" and report["in_channels"] == 3
    assert list(report["layers"]) == ["layer1", "layer2", "layer3", "layer4"]  # no projector

    test = load_split(prepared_data, "fashion_mnist", train=False)
    idx = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:64].sort().values
    x = Normalizer([0.2860], [0.3530])(test.images[idx]).expand(-1, 3, -1, -1)
    with torch.no_grad():
        h = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        for layer in ("layer1", "layer2", "layer3", "layer4"):
            h = getattr(net, layer)(h)
            want = collapse_metrics(torch.flatten(net.avgpool(h), 1))
            got = report["layers"][layer]
            for key in METRICS:
                assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), (layer, key)


def test_a_resnet50_is_recognised_from_its_weights(prepared_data, tmp_path):
    path = _torchvision_file(tmp_path, torchvision.models.resnet50(weights=None), "r50")
    report = audit(path, "fashion_mnist", prepared_data, layers=["layer4"], samples=8)
    assert report["backbone"] == "resnet50" and report["layers"]["layer4"]["dim"] == 2048


@pytest.mark.parametrize(("make", "message"), [
    (lambda: torchvision.models.resnet34(weights=None).state_dict(), "basic blocks [3, 4, 6, 3] per stage is not one"),
    (lambda: {"weight": torch.zeros(3)}, "not a ResNet state_dict nor a checkpoint of this suite"),
    (lambda: [1, 2, 3], "holds a list"),
])
def test_a_checkpoint_of_another_architecture_is_one_clear_error(prepared_data, tmp_path, make, message):
    path = tmp_path / "other.pt"
    torch.save(make(), path)
    with pytest.raises(CheckpointError, match=message.replace("[", r"\[").replace("]", r"\]")):
        audit(path, "fashion_mnist", prepared_data)


def test_weights_that_do_not_fit_and_channels_that_cannot_be_fed(prepared_data, tmp_path):
    state = torchvision.models.resnet18(weights=None).state_dict()
    state["layer2.0.conv1.weight"] = torch.zeros(128, 32, 3, 3)  # a tampered layer: shapes disagree
    path = tmp_path / "tampered.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="do not fit a resnet18"):
        audit(path, "fashion_mnist", prepared_data)
    net = torchvision.models.resnet18(weights=None)
    net.conv1 = torch.nn.Conv2d(2, 64, 7, 2, 3, bias=False)  # 2-channel input: grey cannot be fed to it
    with pytest.raises(CheckpointError, match="takes 2-channel images; fashion_mnist's have 1"):
        audit(_torchvision_file(tmp_path, net, "two"), "fashion_mnist", prepared_data)


def test_unknown_layer_dataset_or_split_lists_the_valid_ones(trained):
    ckpt, data = checkpoint_path(trained), Path(trained.paths.data)
    with pytest.raises(UnknownNameError, match="unknown layer 'layer9'; valid: layer1, layer2, layer3, layer4, projector"):
        audit(ckpt, "fashion_mnist", data, layers=["layer9"])
    with pytest.raises(UnknownNameError, match="unknown dataset 'mnist'; valid: cifar10, cifar100, fashion_mnist"):
        audit(ckpt, "mnist", data)
    with pytest.raises(UnknownNameError, match="unknown split 'val'; valid: test, train"):
        audit(ckpt, "fashion_mnist", data, split="val")


def test_the_command_fails_in_one_line_and_writes_nothing(trained, tmp_path, capsys):
    out = tmp_path / "nothing"
    assert main([str(run_dir(trained)), "--layers", "layer9", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: unknown layer 'layer9'")
    assert not list(tmp_path.glob("nothing*"))
    assert main([str(tmp_path / "missing.pt"), "--out", str(out)]) == 1
    assert capsys.readouterr().err.strip() == f"error: no checkpoint at {tmp_path / 'missing.pt'}"
