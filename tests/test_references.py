"""The references every ablation table carries: raw pixels (no network) and a supervised
baseline trained for its own budget."""

from __future__ import annotations

import json

import pytest

from embreg.data import Normalizer, load_split
from embreg.evaluate import evaluate_pixels, knn_accuracy, linear_probe, probe_subset
from embreg.pretrain import epochs
from embreg.run import run_one
from embreg.rundir import run_dir


def test_pixels_run_is_the_probe_and_knn_on_standardized_pixels(smoke_cfg):
    cfg = smoke_cfg("objective=pixels", "seed=0")
    status = run_one(cfg)
    assert status["state"] == "done", status
    rd = run_dir(cfg)
    metrics = json.loads((rd / "metrics.json").read_text())
    # no network: nothing trained, no collapse metrics, no fine-tuning, no checkpoint
    assert "collapse" not in metrics and "sec_per_step" not in metrics
    assert not any(k.startswith("semi_") for k in metrics)
    assert not (rd / "history.json").exists()
    # the same numbers as the probe and kNN called by hand on the flattened standardized pixels
    ds, ev = cfg.dataset, cfg.eval
    train = load_split(cfg.paths.data, ds.name, train=True, image_size=ds.image_size)
    test = load_split(cfg.paths.data, ds.name, train=False, image_size=ds.image_size)
    probe = probe_subset(train, ev.probe_train_size)
    assert len(probe) == min(ev.probe_train_size, len(train))
    norm = Normalizer(ds.mean, ds.std)
    xtr, xte = norm(probe.images).flatten(1), norm(test.images).flatten(1)
    assert xtr.shape[1] == ds.in_channels * ds.image_size**2
    lin = linear_probe(xtr, probe.labels, xte, test.labels, ds.num_classes, ev, cfg.seed)
    knn = knn_accuracy(xtr, probe.labels, xte, test.labels, ds.num_classes, list(ev.knn_k), ev.knn_temperature)
    assert metrics["linear_top1"] == pytest.approx(lin["top1"], abs=1e-9)
    assert metrics["knn20_top1"] == pytest.approx(knn["knn20_top1"], abs=1e-9)
    # the synthetic classes are bars at class-specific rows: pixels separate them well
    assert metrics["linear_top1"] > 80


def test_pixels_needs_images_in_memory(smoke_cfg):
    cfg = smoke_cfg("objective=pixels")
    ds = cfg.dataset
    train = load_split(cfg.paths.data, ds.name, train=True, image_size=ds.image_size)
    lazy = type(train)(images=object(), labels=train.labels)  # stands for a streamed split
    with pytest.raises(ValueError, match="needs the images in memory"):
        evaluate_pixels(cfg, lazy, train)


def test_supervised_reference_trains_its_own_budget(smoke_cfg):
    sup = smoke_cfg("objective=supervised", "pretrain.supervised_epochs=3", "eval.semi_supervised=false")
    ssl = smoke_cfg("objective=vicreg", "pretrain.supervised_epochs=3")
    assert (epochs(sup), epochs(ssl)) == (3, sup.pretrain.epochs)
    assert epochs(smoke_cfg("objective=supervised")) == sup.pretrain.epochs  # null: the arms' budget
    status = run_one(sup)
    assert status["state"] == "done", status
    metrics = json.loads((run_dir(sup) / "metrics.json").read_text())
    assert metrics["steps"] == 3 * sup.pretrain.steps_per_epoch


def test_supervised_epochs_must_be_positive(smoke_cfg):
    cfg = smoke_cfg("objective=supervised", "pretrain.supervised_epochs=0")
    with pytest.raises(ValueError, match="supervised_epochs"):
        cfg.validate()


def test_profiles_choose_their_references(smoke_cfg):
    from embreg.params import compose_run

    assert compose_run("default", ["ablation=layers"]).ablation.baselines == ["pixels", "random_init", "supervised"]
    assert compose_run("imagenet", ["ablation=layers"]).ablation.baselines == ["random_init", "supervised"]
