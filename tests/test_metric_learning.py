"""The SVMax paper's metric-learning setting: the contrastive loss and recall@k against small
hand-computed cases, the class-disjoint split, and a metric-learning run end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch

from embreg.data import class_indices, class_split, load_split
from embreg.metrics import recall_at_k
from embreg.objective import metric_loss
from embreg.run import pretraining_split, run_one
from embreg.rundir import run_dir
from embreg.terms.contrastive import contrastive


# ---------------------------------------------------------------- the contrastive loss by hand
def test_contrastive_on_four_points_by_hand():
    """Unit vectors at 0, 90, 180 and 270 degrees, classes [0, 0, 1, 1], margin 1.5.
    Pairs (squared distance between unit vectors is 2 - 2 cos):
    positives (0,1): 2, (2,3): 2 -> mean 2.
    negatives (0,2): d = 2 -> 0; (0,3): sqrt 2 -> (1.5 - 1.4142)^2; (1,2): sqrt 2 -> same;
    (1,3): d = 2 -> 0 -> mean (2 * 0.0073593) / 4."""
    e = torch.tensor([[1.0, 0], [0, 1], [-1, 0], [0, -1]]) * 3  # scale is irrelevant: rows are normalized
    y = torch.tensor([0, 0, 1, 1])
    neg = 2 * (1.5 - math.sqrt(2)) ** 2 / 4
    assert float(contrastive(e, y, margin=1.5)) == pytest.approx(2 + neg, rel=1e-6)


def test_contrastive_is_zero_for_a_perfect_embedding_and_has_gradients():
    e = torch.tensor([[1.0, 0], [1, 0], [-1, 0], [-1, 0]], requires_grad=True)
    y = torch.tensor([0, 0, 1, 1])
    loss = contrastive(e, y, margin=0.5)  # same class together, classes at distance 2 > margin
    assert loss.item() == pytest.approx(0, abs=1e-6)
    # one class only: no negative pair, the loss is the positives' mean; collapsed negatives
    # (distance 0) cost margin^2 each, with a finite gradient
    single = contrastive(torch.tensor([[1.0, 0], [0, 1]]), torch.tensor([3, 3]), margin=0.5)
    assert float(single) == pytest.approx(2.0)
    z = torch.tensor([[1.0, 0], [1, 0]], requires_grad=True)
    collapsed = contrastive(z, torch.tensor([0, 1]), margin=0.5)
    assert collapsed.item() == pytest.approx(0.25, rel=1e-5)
    collapsed.backward()
    assert torch.isfinite(z.grad).all()


def test_contrastive_rejects_bad_shapes():
    with pytest.raises(ValueError, match="labels must have shape"):
        contrastive(torch.zeros(4, 3), torch.zeros(3, dtype=torch.long))


def test_metric_loss_adds_svmax_only_when_asked(smoke_cfg):
    torch.manual_seed(0)
    z, y = torch.randn(8, 16, requires_grad=True), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    plain = smoke_cfg("objective=contrastive").objective
    total, logged = metric_loss(z, y, plain)
    logged = {k: float(v) for k, v in logged.items()}
    assert logged["loss"] == pytest.approx(logged["contrastive"]) and 0 < logged["svmax"] < 1
    with_sv = smoke_cfg("objective=contrastive_svmax", "objective.terms.svmax=2.0").objective
    total, logged = metric_loss(z, y, with_sv)
    logged = {k: float(v) for k, v in logged.items()}
    assert logged["loss"] == pytest.approx(logged["contrastive"] + 2 * logged["svmax"], rel=1e-6)
    total.backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()


# ----------------------------------------------------------------------- recall@k by hand
def test_recall_at_k_by_hand():
    """Five directions (cosine similarity ignores length), at angles 0, 0.57, 11.3, 180 and 90
    degrees, classes [0, 0, 1, 1, 2]. Neighbours by angle:
    p0: p1, p2, p4, p3 -> its class-mate first (hit at 1);  p1: p0 first (hit at 1);
    p2 (class 1): p1, p0, p4, p3 -> its class-mate p3 4th (hit at 4);
    p3 (class 1): p4 (90), p2 (168.7), ... -> 2nd (hit at 2);  p4: alone in its class, never.
    recall@1 = 2/5, recall@2 = 3/5, recall@4 = 4/5."""
    e = torch.tensor([[1.0, 0.0], [1.0, 0.01], [1.0, 0.2], [-1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 0, 1, 1, 2])
    assert recall_at_k(e, y, ks=(1, 2, 4)) == pytest.approx({"recall_at_1": 40.0, "recall_at_2": 60.0,
                                                             "recall_at_4": 80.0})
    # k larger than the gallery: everyone else is retrieved
    assert recall_at_k(e, y, ks=(8,))["recall_at_8"] == pytest.approx(80.0)


def test_class_split_is_the_first_half_and_deterministic():
    assert class_split(10) == ([0, 1, 2, 3, 4], [5, 6, 7, 8, 9])
    assert class_split(5) == ([0, 1, 2], [3, 4])
    with pytest.raises(ValueError, match="at least 2 classes"):
        class_split(1)
    labels = torch.tensor([5, 0, 9, 4, 5])
    assert class_indices(labels, [5, 9]).tolist() == [0, 2, 4]


# -------------------------------------------------------------------------- a run end to end
def test_a_metric_run_trains_on_half_the_classes_and_reports_recall(smoke_cfg):
    cfg = smoke_cfg("objective=contrastive_svmax", "eval.semi_supervised=false")
    train = load_split(cfg.paths.data, "fashion_mnist", train=True)
    seen = pretraining_split(cfg, train)
    assert set(seen.labels.unique().tolist()) == {0, 1, 2, 3, 4}
    assert len(seen) == int((train.labels < 5).sum())
    status = run_one(cfg)
    assert status["state"] == "done", status
    rd = run_dir(cfg)
    metrics = json.loads((rd / "metrics.json").read_text())
    assert {"recall_at_1", "recall_at_8", "backbone_recall_at_1", "linear_top1"} <= metrics.keys()
    assert 0 <= metrics["recall_at_1"] <= metrics["recall_at_8"] <= 100
    history = json.loads((rd / "history.json").read_text())
    assert {"contrastive", "svmax", "loss"} <= history[0].keys()


def test_every_run_reports_recall_on_the_held_out_classes(smoke_cfg):
    """An SSL arm and the pixels reference get the same retrieval numbers, so that a metric arm has
    anchors: recall@1 of the pixels equals recall_at_k on the held-out classes' standardized pixels."""
    from embreg.data import Normalizer

    cfg = smoke_cfg("objective=pixels")
    assert run_one(cfg)["state"] == "done"
    metrics = json.loads((run_dir(cfg) / "metrics.json").read_text())
    test = load_split(cfg.paths.data, "fashion_mnist", train=False)
    idx = class_indices(test.labels, class_split(10)[1])
    x = Normalizer(cfg.dataset.mean, cfg.dataset.std)(test.images[idx]).flatten(1)
    assert metrics["recall_at_1"] == pytest.approx(recall_at_k(x, test.labels[idx], (1,))["recall_at_1"])
