"""embreg.objective: the weighted total, the embedding space, zero coefficients and the
"all layers" arm (the last-layer arm plus weighted stage terms)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from embreg import objective as O
from embreg import terms as T
from embreg.config import ObjectiveConfig
from embreg.terms import svmax as S
from embreg.terms import vicreg as R
from tests.reference import vicreg_loss

B, D = 16, 8
TAP_WIDTHS = {"layer1": 6, "layer3": 12, "layer2": 24}  # b < c and b >= c, unsorted on purpose
REGS = ("variance", "covariance", "svmax")  # the regularizers under test here
BASE = {"variance": 25.0, "covariance": 1.0, "svmax": 0.5}


def logged_by_ssl_arms() -> set[str]:
    """The terms every self-supervised arm logs, trained or not (from the registry)."""
    return {n for n in T.names() if T.get(n).monitor and "ssl" in T.get(n).kinds and T.get(n).head is None}


def objective(space: str = "raw", layers: str = "last", layer_weight: float = 1.0, invariance: float = 25.0,
              variance: float = 25.0, covariance: float = 1.0, svmax: float = 0.0, **params) -> ObjectiveConfig:
    """An ObjectiveConfig from coefficients and term parameters (gamma, eps, halve, form)."""
    var = {k: params[k] for k in ("gamma", "eps", "halve") if k in params}
    par = {**({"variance": var} if var else {}), **({"svmax": {"form": params["form"]}} if "form" in params else {})}
    return ObjectiveConfig(space=space, layers=layers, layer_weight=layer_weight, params=par,
                           terms={"invariance": invariance, "variance": variance, "covariance": covariance, "svmax": svmax})


def view_invariance(z1: torch.Tensor, z2: torch.Tensor, space: str) -> torch.Tensor:
    return R.invariance(z1, z2) if space == "raw" else R.sphere_invariance(z1, z2)


def regularizer_terms(z1: torch.Tensor, z2: torch.Tensor, obj: ObjectiveConfig) -> dict[str, torch.Tensor]:
    """The regularizers on one pair of embeddings, as the objective computes them."""
    return O.term_values(O.Views((z1, z2), obj.space), obj, O.computed_terms(obj, regularizers_only=True))


def ssl_loss(*args, **kwargs) -> tuple[torch.Tensor, dict[str, float]]:
    """``O.ssl_loss`` with its logged terms read as floats, after checking they are what the
    training loop expects: detached 0-d tensors on the embedding's device (read every few steps)."""
    total, logged = O.ssl_loss(*args, **kwargs)
    for v in logged.values():
        assert isinstance(v, torch.Tensor) and v.dim() == 0 and not v.requires_grad and v.device == total.device
    return total, {k: float(v) for k, v in logged.items()}


def config(**overrides) -> ObjectiveConfig:
    obj = objective(**{**BASE, **overrides})
    obj.validate()
    return obj


# ----------------------------------------------------------------------------- helpers
def rand(b: int, d: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(b, d, generator=g, dtype=torch.float64) + 0.1


def views(seed: int = 0, grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    z1, z2 = rand(B, D, seed, 0.6), rand(B, D, seed + 1, 0.6)
    return z1.requires_grad_(grad), z2.requires_grad_(grad)


def taps(seed: int = 10, grad: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    t1 = {n: rand(B, c, seed + i, 0.5).requires_grad_(grad) for i, (n, c) in enumerate(TAP_WIDTHS.items())}
    t2 = {
        n: rand(B, c, seed + 50 + i, 0.5).requires_grad_(grad) for i, (n, c) in enumerate(TAP_WIDTHS.items())
    }
    return t1, t2


def np_space(z: torch.Tensor, space: str) -> torch.Tensor:
    """Independent float64 version of to_space."""
    a = z.detach().numpy()
    if space == "l2":
        a = a / np.linalg.norm(a, axis=1, keepdims=True) * math.sqrt(a.shape[1])
    return torch.from_numpy(a)


def expected_terms(z1: torch.Tensor, z2: torch.Tensor, obj: ObjectiveConfig) -> dict[str, float]:
    """Each regularizer by hand from the (separately tested) functions of embreg.terms."""
    e1, e2 = np_space(z1, obj.space), np_space(z2, obj.space)
    d1, d2 = z1.detach(), z2.detach()
    var, form = T.get("variance").resolved(obj.params.get("variance")), T.get("svmax").resolved(obj.params.get("svmax"))
    return {
        "variance": float(R.variance_term(e1, e2, var["gamma"], var["eps"], var["halve"])),
        "covariance": float(R.covariance_term(e1, e2)),
        "svmax": float((S.svmax_loss(d1, form["form"]) + S.svmax_loss(d2, form["form"])) / 2),
    }


def expected_invariance(z1: torch.Tensor, z2: torch.Tensor, space: str) -> float:
    a, b = z1.detach().numpy(), z2.detach().numpy()
    if space == "raw":
        return float(np.mean((a - b) ** 2))
    cos = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(np.mean(2.0 - 2.0 * cos))


def graph_nodes(t: torch.Tensor) -> set[str]:
    """Names of every autograd node reachable from t."""
    seen, stack, names = set(), [t.grad_fn], set()
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        names.add(type(fn).__name__)
        stack.extend(nxt for nxt, _ in fn.next_functions)
    return names


# --------------------------------------------------------------------- layers = "last"
@pytest.mark.parametrize("space", ["raw", "l2"])
@pytest.mark.parametrize(
    "coeffs",
    [(25.0, 25.0, 1.0, 0.0), (25.0, 25.0, 1.0, 0.5), (1.0, 0.0, 0.0, 2.0), (0.0, 3.0, 0.2, 0.0)],
)
def test_last_layer_total_is_weighted_sum(space, coeffs):
    inv_c, var_c, cov_c, svm_c = coeffs
    obj = objective(space=space, invariance=inv_c, variance=var_c, covariance=cov_c, svmax=svm_c)
    obj.validate()
    z1, z2 = views()
    t1, t2 = taps()
    total, logged = ssl_loss(z1, z2, t1, t2, obj)
    inv = expected_invariance(z1, z2, space)
    terms = expected_terms(z1, z2, obj)
    expected = inv_c * inv + var_c * terms["variance"] + cov_c * terms["covariance"] + svm_c * terms["svmax"]
    assert total.dim() == 0
    assert float(total.detach()) == pytest.approx(expected, rel=1e-10)
    # every term is logged (also those with coefficient 0)
    assert set(logged) == logged_by_ssl_arms() | {"loss"}
    assert logged["invariance"] == pytest.approx(inv, rel=1e-10)
    for name in REGS:
        assert logged[name] == pytest.approx(terms[name], rel=1e-10)
    assert logged["loss"] == pytest.approx(float(total.detach()), rel=1e-12)


def test_default_raw_objective_is_vicreg():
    obj = objective()
    z1, z2 = views(seed=3)
    total, _ = ssl_loss(z1, z2, {}, {}, obj)
    assert float(total.detach()) == pytest.approx(float(vicreg_loss(z1, z2)), rel=1e-12)


@pytest.mark.parametrize(
    ("gamma", "halve", "form"), [(0.5, False, "exp"), (2.0, True, "neg_mean"), (1.0, False, "score")]
)
def test_options_are_passed_through(gamma, halve, form):
    obj = objective(gamma=gamma, halve=halve, form=form, svmax=1.0, eps=1e-3)
    z1, z2 = views(seed=4)
    _, logged = ssl_loss(z1, z2, {}, {}, obj)
    v = R.variance(z1, gamma, 1e-3) + R.variance(z2, gamma, 1e-3)
    assert logged["variance"] == pytest.approx(float(v / 2 if halve else v), rel=1e-10)
    svm = (S.svmax_loss(z1, form) + S.svmax_loss(z2, form)) / 2
    assert logged["svmax"] == pytest.approx(float(svm), rel=1e-10)


def test_last_layer_ignores_taps():
    obj = objective(svmax=1.0, layers="last")
    z1, z2 = views(seed=5, grad=True)
    t1, t2 = taps(grad=True)
    total, logged = ssl_loss(z1, z2, t1, t2, obj)
    total_no_taps, _ = ssl_loss(z1, z2, {}, {}, obj)
    assert float(total.detach()) == float(total_no_taps.detach())
    assert not any(k.endswith("_stages") for k in logged)
    total.backward()
    assert all(t.grad is None for t in [*t1.values(), *t2.values()])


# -------------------------------------------------------------------- zero coefficients
@pytest.mark.parametrize("space", ["raw", "l2"])
@pytest.mark.parametrize("zero", REGS)
def test_zero_coefficient_has_no_grad_path(space, zero):
    obj = config(space=space, **{zero: 0.0})
    z1, z2 = views(seed=6)
    terms = regularizer_terms(z1.requires_grad_(), z2.requires_grad_(), obj)
    assert not terms[zero].requires_grad  # computed for logging only
    assert float(terms[zero]) == pytest.approx(expected_terms(z1, z2, obj)[zero], rel=1e-10)
    assert float(terms[zero]) != 0.0
    for name in REGS:
        if name != zero:
            assert terms[name].requires_grad


@pytest.mark.parametrize("layers", ["last", "all"])
@pytest.mark.parametrize("zero", REGS)
def test_zero_coefficient_contributes_nothing(layers, zero):
    obj = config(layers=layers, **{zero: 0.0})
    z1, z2 = views(seed=7, grad=True)
    t1, t2 = taps(grad=True)
    total, logged = ssl_loss(z1, z2, t1, t2, obj)
    assert logged[zero] != 0.0  # it is logged, yet not in the total
    stages = (lambda n: logged[f"{n}_stages"]) if layers == "all" else (lambda n: 0.0)
    expected = 25.0 * logged["invariance"] + sum(BASE[n] * (logged[n] + stages(n)) for n in REGS if n != zero)
    assert float(total.detach()) == pytest.approx(expected, rel=1e-10)

    # the gradient equals that of the same total built without the zero term at all
    total.backward()
    grads = [z1.grad.clone(), z2.grad.clone()]
    y1, y2 = z1.detach().clone().requires_grad_(), z2.detach().clone().requires_grad_()
    u1 = {n: t.detach().clone() for n, t in t1.items()}
    u2 = {n: t.detach().clone() for n, t in t2.items()}
    ref = 25.0 * view_invariance(y1, y2, "raw")
    for name in REGS:
        if name == zero:
            continue
        ref = ref + BASE[name] * regularizer_terms(y1, y2, obj)[name]
        if layers == "all":
            ref = ref + BASE[name] * sum(regularizer_terms(u1[n], u2[n], obj)[name] for n in sorted(u1))
    ref.backward()
    torch.testing.assert_close(grads[0], y1.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grads[1], y2.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    ("zero", "marker"),
    [("svmax", "_MeanSingularValueBackward"), ("variance", "VarBackward0"), ("covariance", "MmBackward0")],
)
def test_zero_term_absent_from_autograd_graph(zero, marker):
    on, off = config(), config(**{zero: 0.0})
    z1, z2 = views(seed=8, grad=True)
    total_on, _ = ssl_loss(z1, z2, {}, {}, on)
    total_off, _ = ssl_loss(z1, z2, {}, {}, off)
    assert marker in graph_nodes(total_on)
    assert marker not in graph_nodes(total_off)


def test_an_objective_that_trains_no_term_is_refused():
    obj = objective(invariance=0.0, variance=0.0, covariance=0.0, svmax=0.0)
    z1, z2 = views(seed=9, grad=True)
    with pytest.raises(ValueError, match="trains no term"):
        ssl_loss(z1, z2, {}, {}, obj)


def test_zero_invariance_coefficient_gives_no_invariance_gradient():
    """Invariance at 0 is logged, computed without gradient: only the other terms train."""
    obj = objective(invariance=0.0, variance=1.0, covariance=0.0, svmax=0.0)
    z1, z2 = views(seed=9, grad=True)
    total, logged = ssl_loss(z1, z2, {}, {}, obj)
    assert logged["invariance"] > 0.0 and float(total.detach()) == pytest.approx(logged["variance"], rel=1e-12)
    total.backward()
    y1, y2 = z1.detach().clone().requires_grad_(), z2.detach().clone().requires_grad_()
    R.variance_term(y1, y2).backward()
    torch.testing.assert_close(z1.grad, y1.grad, rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------------- layers = "all"
@pytest.mark.parametrize("space", ["raw", "l2"])
@pytest.mark.parametrize("layer_weight", [1.0, 0.2, 2.0])
def test_all_layers_adds_weighted_stage_sums(space, layer_weight):
    coeffs = {"invariance": 25.0, "variance": 25.0, "covariance": 1.0, "svmax": 0.7}
    obj = objective(space=space, layers="all", layer_weight=layer_weight, **coeffs)
    z1, z2 = views(seed=11)
    t1, t2 = taps()
    total, logged = ssl_loss(z1, z2, t1, t2, obj)

    final = expected_terms(z1, z2, obj)
    stages = [expected_terms(t1[n], t2[n], obj) for n in TAP_WIDTHS]
    inv = expected_invariance(z1, z2, space)  # invariance: final embedding only
    for name in REGS:
        assert logged[name] == pytest.approx(final[name], rel=1e-10)  # final embedding alone
        stage_sum = layer_weight * sum(t[name] for t in stages)
        assert logged[f"{name}_stages"] == pytest.approx(stage_sum, rel=1e-10)
    assert logged["invariance"] == pytest.approx(inv, rel=1e-10)
    expected = coeffs["invariance"] * inv + sum(
        coeffs[n] * (final[n] + layer_weight * sum(t[n] for t in stages)) for n in REGS
    )
    assert float(total.detach()) == pytest.approx(expected, rel=1e-10)
    assert logged["loss"] == pytest.approx(expected, rel=1e-10)


def test_all_layers_sum_not_average():
    """With taps identical to the final embedding, each stage adds the final term once more."""
    obj_all = objective(layers="all", svmax=1.0)
    obj_last = objective(layers="last", svmax=1.0)
    z1, z2 = views(seed=12)
    t1 = {"a": z1.clone(), "b": z1.clone()}
    t2 = {"a": z2.clone(), "b": z2.clone()}
    total_all, logged = ssl_loss(z1, z2, t1, t2, obj_all)
    total_last, _ = ssl_loss(z1, z2, t1, t2, obj_last)
    regs = sum(obj_all.terms[n] * logged[n] for n in REGS)
    assert float(total_all.detach()) == pytest.approx(float(total_last.detach()) + 2 * regs, rel=1e-12)
    for name in REGS:
        assert logged[f"{name}_stages"] == pytest.approx(2 * logged[name], rel=1e-12)


def test_all_layers_without_taps_equals_last():
    z1, z2 = views(seed=13)
    total_all, logged = ssl_loss(z1, z2, {}, {}, objective(layers="all", svmax=0.3))
    total_last, _ = ssl_loss(z1, z2, {}, {}, objective(layers="last", svmax=0.3))
    assert float(total_all.detach()) == pytest.approx(float(total_last.detach()), rel=1e-12)
    assert all(logged[f"{n}_stages"] == 0.0 for n in REGS)


def arm(name: str, **overrides) -> ObjectiveConfig:
    """An arm's objective exactly as conf/objective composes it."""
    from embreg.params import compose_run

    obj = compose_run("default", [f"objective={name}"]).objective
    for key, value in overrides.items():
        setattr(obj, key, value)
    obj.validate()
    return obj


def final_and_tap_grads(obj: ObjectiveConfig) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Gradients of the total on (z1, z2) and on every tap, one fixed batch."""
    z1, z2 = views(seed=40, grad=True)
    t1, t2 = taps(seed=41, grad=True)
    O.ssl_loss(z1, z2, t1, t2, obj)[0].backward()
    tap_grads = [t.grad for t in [*t1.values(), *t2.values()]]
    return [z1.grad, z2.grad], tap_grads


@pytest.mark.parametrize(("last", "all_"), [("svmax", "svmax_all"), ("vicreg", "vicreg_all")])
@pytest.mark.parametrize("layer_weight", [1.0, 0.2, 0.0])
def test_all_layer_arm_nests_the_last_layer_arm(last, all_, layer_weight):
    """Ablation C compares like with like: on one batch, the gradient reaching the final
    embedding is the last-layer arm's, whatever the stage weight."""
    ref, ref_taps = final_and_tap_grads(arm(last))
    got, got_taps = final_and_tap_grads(arm(all_, layer_weight=layer_weight))
    assert all(g is None for g in ref_taps)
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)
    if layer_weight == 0:  # the stage terms are logged only, outside the graph
        assert all(g is None for g in got_taps)
    else:
        assert all(g is not None and torch.count_nonzero(g) > 0 for g in got_taps)


@pytest.mark.parametrize("name", ["svmax_all", "vicreg_all"])
def test_stage_gradient_scales_with_layer_weight(name):
    _, one = final_and_tap_grads(arm(name, layer_weight=1.0))
    _, two = final_and_tap_grads(arm(name, layer_weight=2.0))
    _, half = final_and_tap_grads(arm(name, layer_weight=0.5))
    for g1, g2, g05 in zip(one, two, half, strict=True):
        torch.testing.assert_close(g2, 2.0 * g1, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(g05, 0.5 * g1, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("bad", [-0.1, math.inf, math.nan])
def test_layer_weight_must_be_finite_and_non_negative(bad):
    with pytest.raises(ValueError, match="objective.layer_weight must be finite and >= 0"):
        objective(layers="all", layer_weight=bad).validate()


def test_all_layers_gradient_reaches_taps():
    obj = objective(layers="all", svmax=1.0)
    z1, z2 = views(seed=14, grad=True)
    t1, t2 = taps(grad=True)
    total, _ = ssl_loss(z1, z2, t1, t2, obj)
    total.backward()
    for t in [z1, z2, *t1.values(), *t2.values()]:
        assert t.grad is not None
        assert torch.isfinite(t.grad).all()
        assert torch.count_nonzero(t.grad) > 0


@pytest.mark.parametrize("space", ["raw", "l2"])
@pytest.mark.parametrize("layers", ["last", "all"])
def test_gradcheck_ssl_loss(space, layers):
    obj = objective(space=space, layers=layers, variance=2.0, covariance=1.0, svmax=0.5)
    widths = [4, 4, 3, 8, 3, 8]  # z1, z2, then taps a (b >= c) and b (b < c) of each view
    inputs = tuple(rand(6, w, 20 + i, 0.5).requires_grad_() for i, w in enumerate(widths))

    def fn(z1, z2, a1, b1, a2, b2):
        return O.ssl_loss(z1, z2, {"a": a1, "b": b1}, {"a": a2, "b": b2}, obj)[0]

    assert torch.autograd.gradcheck(fn, inputs)


# ------------------------------------------------------------------------------ spaces
@pytest.mark.parametrize(("b", "d"), [(8, 4), (4, 8), (32, 16)])
def test_l2_invariance_is_two_minus_two_cos(b, d):
    z1, z2 = rand(b, d, 30), rand(b, d, 31)
    got = float(view_invariance(z1, z2, "l2"))
    n1 = z1 / z1.norm(dim=1, keepdim=True)
    n2 = z2 / z2.norm(dim=1, keepdim=True)
    sq = float((n1 - n2).pow(2).sum(dim=1).mean())
    cos = torch.nn.functional.cosine_similarity(z1, z2, dim=1)
    assert got == pytest.approx(sq, rel=1e-12)
    assert got == pytest.approx(float((2 - 2 * cos).mean()), rel=1e-10)
    assert got == pytest.approx(expected_invariance(z1, z2, "l2"), rel=1e-10)


def test_l2_invariance_known_values():
    z = rand(8, 4, 32)
    assert float(view_invariance(z, 5.0 * z, "l2")) == pytest.approx(0.0, abs=1e-14)  # row scale ignored
    assert float(view_invariance(z, -z, "l2")) == pytest.approx(4.0, rel=1e-12)  # opposite rows
    e = torch.eye(4, dtype=torch.float64)
    assert float(view_invariance(e, e.roll(1, dims=1), "l2")) == pytest.approx(2.0, rel=1e-12)  # orthogonal


def test_raw_invariance_is_mse():
    z1, z2 = rand(8, 4, 33), rand(8, 4, 34)
    assert float(view_invariance(z1, z2, "raw")) == pytest.approx(expected_invariance(z1, z2, "raw"), rel=1e-12)


def test_to_space():
    z = rand(4000, 16, 35)
    assert O.to_space(z, "raw") is z
    e = O.to_space(z, "l2")
    torch.testing.assert_close(e.norm(dim=1), torch.full((4000,), 4.0, dtype=torch.float64))
    torch.testing.assert_close(e, np_space(z, "l2"))
    # sqrt(d) scaling: a spread-out embedding has per-dimension std about 1
    std = e.std(dim=0)
    assert float(std.min()) > 0.9 and float(std.max()) < 1.1


def test_l2_space_variance_sees_scaled_sphere():
    """In l2 space the raw scale of z does not matter to any term."""
    obj = objective(space="l2", svmax=1.0)
    z1, z2 = views(seed=36)
    _, small = ssl_loss(z1, z2, {}, {}, obj)
    _, big = ssl_loss(100.0 * z1, 100.0 * z2, {}, {}, obj)
    for key in ("invariance", *REGS, "loss"):
        assert big[key] == pytest.approx(small[key], rel=1e-9)


@pytest.mark.parametrize("layers", ["last", "all"])
def test_without_monitor_only_the_trained_terms_are_computed(layers):
    """``monitor=False`` (a step between ``pretrain.monitor_every``): the terms the arm does not
    train with are neither computed nor logged; the loss and what is logged of it are unchanged."""
    obj = objective(space="l2", variance=0.0, covariance=0.0, svmax=1.0, layers=layers)
    z1, z2 = views()
    t1, t2 = taps()
    total, logged = ssl_loss(z1, z2, t1, t2, obj)
    lean_total, lean = ssl_loss(z1, z2, t1, t2, obj, monitor=False)
    trained = {"invariance", "svmax", "loss"} | ({"svmax_stages"} if layers == "all" else set())
    assert set(lean) == trained and set(logged) > trained
    assert float(lean_total) == float(total) and all(lean[k] == logged[k] for k in trained)
