"""One run end to end on the smoke profile: what its directory holds, reuse, failure records."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from embreg.checks import ConfigError
from embreg.fingerprint import run_fingerprint
from embreg.run import run_one
from embreg.rundir import checkpoint_path, run_dir, run_id


def test_run_writes_config_metrics_history_and_is_reused(smoke_cfg):
    cfg = smoke_cfg("objective=svmax", "seed=1", "eval.semi_supervised=true")
    status = run_one(cfg)
    rd = run_dir(cfg)
    assert status["state"] == "done", status
    assert rd.name == "seed1" and rd.parent.name == "svmax"
    metrics = json.loads((rd / "metrics.json").read_text())
    for key in ("linear_top1", "linear_top5", "knn20_top1", "knn200_top1", "semi_1pct_top1",
                "semi_10pct_top5", "sec_per_step", "peak_memory_mb", "git_revision", "fingerprint"):
        assert key in metrics, key
    assert 0 <= metrics["linear_top1"] <= metrics["linear_top5"] <= 100
    assert set(metrics["collapse"]) == {"backbone", "projector", "layer1", "layer2", "layer3"}
    assert metrics["collapse"]["projector"]["dim"] == 64 and metrics["collapse"]["layer1"]["dim"] == 64
    assert len(json.loads((rd / "history.json").read_text())) == cfg.pretrain.epochs
    assert yaml.safe_load((rd / "config.yaml").read_text())["objective"]["terms"]["svmax"] == 1.0
    assert checkpoint_path(cfg).is_file()
    # a second call with the same config and code reuses the result
    before = (rd / "metrics.json").stat().st_mtime_ns
    assert run_one(cfg)["state"] == "done"
    assert (rd / "metrics.json").stat().st_mtime_ns == before
    # a changed hyperparameter is another fingerprint: retrained, not reused
    changed = smoke_cfg("objective=svmax", "seed=1", "eval.semi_supervised=true", "optim.lr=0.002")
    assert run_fingerprint(changed) != run_fingerprint(cfg)
    with pytest.raises(ConfigError, match="holds a finished run of another config"):
        run_one(changed)  # by hand: never over a result it was not meant for
    assert (rd / "metrics.json").stat().st_mtime_ns == before
    changed.runtime.replace = True  # the sweep's jobs: the directory is theirs
    run_one(changed)
    assert (rd / "metrics.json").stat().st_mtime_ns != before


def test_swept_key_names_the_run(smoke_cfg):
    cfg = smoke_cfg("objective=svmax", "objective.terms.svmax=0.1", "tag_keys=[objective.terms.svmax]")
    assert run_id(cfg) == "svmax@svmax=0.1"


def test_random_init_is_evaluated_without_training_or_fine_tuning(smoke_cfg):
    cfg = smoke_cfg("objective=random_init")
    assert run_one(cfg)["state"] == "done"
    metrics = json.loads((run_dir(cfg) / "metrics.json").read_text())
    assert "linear_top1" in metrics and "semi_1pct_top1" not in metrics and "sec_per_step" not in metrics
    assert not (run_dir(cfg) / "history.json").exists()


def test_a_failing_run_records_its_error_instead_of_raising(smoke_cfg, tmp_path):
    data = tmp_path / "broken"
    good = smoke_cfg().paths.data
    shutil.copytree(good, data)
    shutil.rmtree(data / "fashion_mnist" / "subsets")
    cfg = smoke_cfg("objective=inv_only", f"paths.data={data}", "eval.semi_supervised=true")
    status = run_one(cfg)
    assert status["state"] == "failed"
    assert "train_1pct" in status["error"]
    assert (run_dir(cfg) / "error.txt").read_text().startswith("Traceback")
    assert not (run_dir(cfg) / "metrics.json").exists()


def test_a_diverging_run_is_marked_diverged(smoke_cfg):
    cfg = smoke_cfg("objective=vicreg", "optim.name=sgd", "optim.lr=1e30")
    status = run_one(cfg)
    assert status["state"] == "diverged" and "loss is" in status["error"]


def test_weights_blown_up_by_the_last_step_are_diverged(smoke_cfg):
    """The loss of the only step is finite, but the update makes the weights non-finite (lr x the
    weight-decay gradient overflows float32; both are finite, valid settings): the run is
    diverged, not a crash in the evaluation's SVD."""
    cfg = smoke_cfg("objective=vicreg", "optim.name=sgd", "optim.lr=1e38", "optim.weight_decay=1e10",
                    "pretrain.epochs=1", "pretrain.steps_per_epoch=1")
    status = run_one(cfg)
    assert status["state"] == "diverged" and "weights are not finite" in status["error"]
