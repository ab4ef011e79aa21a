"""SimSiam's loss against the paper's pseudocode (Chen & He 2021, Algorithm 1), the stop-gradient
seen in the gradients, the predictor head, and the term through the model and the objective."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from embreg.config import BackboneConfig, ObjectiveConfig
from embreg.models import build_model
from embreg.objective import ssl_loss
from embreg.terms import simsiam as S


def paper_D(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Algorithm 1's D: negative cosine similarity, z detached (stop-gradient)."""
    z = z.detach()
    p = F.normalize(p, dim=1)
    z = F.normalize(z, dim=1)
    return -(p * z).sum(dim=1).mean()


def val(t: torch.Tensor) -> float:
    return float(t.detach())


def tensors(seed: int, b: int = 16, d: int = 12) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, d, generator=g, dtype=torch.float64).requires_grad_() for _ in range(4)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_the_paper_pseudocode(seed):
    p1, p2, z1, z2 = tensors(seed)
    expected = paper_D(p1, z2) / 2 + paper_D(p2, z1) / 2
    assert val(S.simsiam_loss(p1, p2, z1, z2)) == pytest.approx(val(expected), rel=1e-12)


def test_stop_gradient_leaves_the_targets_without_gradient():
    p1, p2, z1, z2 = tensors(3)
    S.simsiam_loss(p1, p2, z1, z2, stop_gradient=True).backward()
    assert z1.grad is None and z2.grad is None  # the target branch is cut
    assert p1.grad is not None and p2.grad is not None
    q1, q2, y1, y2 = tensors(3)
    (paper_D(q1, y2) / 2 + paper_D(q2, y1) / 2).backward()
    torch.testing.assert_close(p1.grad, q1.grad, rtol=1e-12, atol=1e-15)


def test_without_stop_gradient_the_targets_get_gradient():
    p1, p2, z1, z2 = tensors(4)
    loss = S.simsiam_loss(p1, p2, z1, z2, stop_gradient=False)
    loss.backward()
    assert z1.grad is not None and torch.count_nonzero(z1.grad) > 0
    assert val(loss) == pytest.approx(val(S.simsiam_loss(p1, p2, z1, z2, stop_gradient=True)), rel=1e-12)


def test_the_loss_ignores_lengths_and_spans_minus_one_to_one():
    p1, p2, z1, z2 = (t.detach() for t in tensors(5))
    base = val(S.simsiam_loss(p1, p2, z1, z2))
    assert val(S.simsiam_loss(3 * p1, 0.1 * p2, 7 * z1, z2)) == pytest.approx(base, rel=1e-12)
    assert val(S.simsiam_loss(z2, z1, z1, z2)) == pytest.approx(-1.0)  # each prediction equals its target
    assert val(S.simsiam_loss(-z2, -z1, z1, z2)) == pytest.approx(1.0)


def test_predictor_is_the_papers_bottleneck():
    h = S.predictor(64, 0.25)
    assert [type(m).__name__ for m in h] == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert h[0].in_features == 64 and h[0].out_features == 16 and h[0].bias is None and h[3].out_features == 64


def test_the_arm_builds_its_predictor_and_trains_through_it():
    obj = ObjectiveConfig(terms={"simsiam": 1.0}, params={"simsiam": {"stop_gradient": True, "bottleneck": 0.25}})
    torch.manual_seed(0)
    model = build_model(BackboneConfig(projector=[32, 32]), 1, 10, obj)
    assert list(model.heads) == ["simsiam"] and model.heads["simsiam"][0].out_features == 8
    torch.manual_seed(0)
    plain = build_model(BackboneConfig(projector=[32, 32]), 1, 10)
    # the head is drawn after the rest: every other parameter is the arm without a head's
    for (name, a), (_, b) in zip(plain.state_dict().items(), model.state_dict().items(), strict=False):
        torch.testing.assert_close(a, b, msg=name)
    x1, x2 = torch.randn(8, 1, 28, 28), torch.randn(8, 1, 28, 28)
    z1, z2 = model(x1)[0], model(x2)[0]
    h = model.heads["simsiam"]
    total, logged = ssl_loss(z1, z2, {}, {}, obj, heads={"simsiam": (h(z1), h(z2))})
    assert val(total) == pytest.approx(val(paper_D(h(z1), z2) / 2 + paper_D(h(z2), z1) / 2), rel=1e-6)
    assert "invariance" in logged and "simsiam" in logged
    total.backward()
    assert h[0].weight.grad is not None and torch.count_nonzero(h[0].weight.grad) > 0
