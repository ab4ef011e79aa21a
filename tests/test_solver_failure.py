"""An eigensolver failure on a finite embedding is not a divergence: ``spectral.eigh`` retries in
float64, then on the CPU, then by an SVD, and the run goes on; only a non-finite embedding (or
loss) is a divergence, and a solver that fails everywhere on finite input fails the run. The
failures are forced by patching torch's solvers (cuSOLVER's syevj / syevd fail this way on the
ill-conditioned Gram matrices of a nearly collapsed embedding)."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

import embreg.pretrain as P
from embreg.data import load_split
from embreg.models import build_model
from embreg.run import run_one
from embreg.terms import spectral as S

SOLVERS = ("eigh", "eigvalsh")


def failing_solvers(monkeypatch, fail: dict[torch.dtype, int], also_svd: bool = False) -> Counter:
    """Make torch.linalg.eigh / eigvalsh raise LinAlgError on their first ``fail[dtype]`` calls for
    input of that dtype (every call with ``fail[dtype] < 0``), and with ``also_svd`` every SVD too.
    Returns the calls per dtype and the failures raised ("raised")."""
    calls: Counter = Counter()

    def fails(a: torch.Tensor) -> torch.linalg.LinAlgError:
        calls["raised"] += 1
        return torch.linalg.LinAlgError(f"linalg.eigh: the algorithm failed to converge (patched, {a.dtype})")

    def wrap(real):
        def solver(a, *args, **kwargs):
            calls[a.dtype] += 1
            budget = fail.get(a.dtype, 0)
            if budget < 0 or calls[a.dtype] <= budget:
                raise fails(a)
            return real(a, *args, **kwargs)
        return solver

    def no_svd(a, *args, **kwargs):
        raise fails(a)

    for name in SOLVERS:
        monkeypatch.setattr(torch.linalg, name, wrap(getattr(torch.linalg, name)))
    if also_svd:
        monkeypatch.setattr(torch.linalg, "svd", no_svd)
        monkeypatch.setattr(torch.linalg, "svdvals", no_svd)
    return calls


def _gram(b: int = 24, d: int = 64, seed: int = 0) -> torch.Tensor:
    e = torch.randn(b, d, generator=torch.Generator().manual_seed(seed))
    return e @ e.T


@pytest.mark.parametrize("vectors", [True, False])
def test_a_failed_float32_solve_returns_the_float64_solution(monkeypatch, vectors):
    g = _gram()
    lam64, vec64 = torch.linalg.eigh(g.double())
    calls = failing_solvers(monkeypatch, {torch.float32: 1})
    lam, vec = S.eigh(g, vectors)
    assert calls == {torch.float32: 1, torch.float64: 1, "raised": 1}
    assert lam.dtype == torch.float32 and torch.equal(lam, lam64.float())  # exactly float64's, cast back
    assert (vec is None) if not vectors else torch.equal(vec, vec64.float())


def test_a_successful_solve_is_torchs_own_bit_for_bit():
    g = _gram()
    lam, vec = S.eigh(g, True)
    ref_lam, ref_vec = torch.linalg.eigh(g)
    assert torch.equal(lam, ref_lam) and torch.equal(vec, ref_vec)
    assert torch.equal(S.eigh(g, False)[0], torch.linalg.eigvalsh(g))


def test_the_value_and_gradient_after_a_failure_equal_the_float64_paths(monkeypatch):
    """mean_singular_value on a well-conditioned (float32-path) matrix: with the float32 solve
    failing, value and gradient are the float64 path's (to float32 rounding)."""
    e = torch.randn(16, 64, generator=torch.Generator().manual_seed(1))
    assert S.spectrum_precision(torch.nn.functional.normalize(e, dim=-1)) == "float32"
    x64 = e.double().requires_grad_()
    ref = S.mean_singular_value(x64)
    ref.backward()
    failing_solvers(monkeypatch, {torch.float32: 1})
    x = e.clone().requires_grad_()
    value = S.mean_singular_value(x)
    value.backward()
    assert value.dtype == torch.float32
    torch.testing.assert_close(value.double(), ref.detach(), rtol=1e-6, atol=0)
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-4, atol=1e-6)


def test_float32_and_float64_failing_leave_the_svd_of_the_same_matrix(monkeypatch):
    g = _gram(seed=2)
    ref_lam, ref_vec = torch.linalg.eigh(g.double())
    calls = failing_solvers(monkeypatch, {torch.float32: 1, torch.float64: 1})
    lam, vec = S.eigh(g, True)
    assert calls["raised"] == 2 and lam.dtype == torch.float32
    torch.testing.assert_close(lam.double(), ref_lam, rtol=1e-6, atol=1e-3)
    # eigenvectors up to sign: the same spectral projector, the same reconstruction
    torch.testing.assert_close((vec * lam) @ vec.T, g, rtol=1e-4, atol=1e-2)
    torch.testing.assert_close((vec.double().T @ ref_vec).abs(), torch.eye(len(g), dtype=torch.float64), atol=1e-3,
                               rtol=0)


def test_a_solver_failing_everywhere_on_finite_input_is_a_runtime_error_not_a_divergence(monkeypatch):
    failing_solvers(monkeypatch, {torch.float32: -1, torch.float64: -1}, also_svd=True)
    with pytest.raises(RuntimeError, match="failed on a finite .* by an SVD") as info:
        S.eigh(_gram(), True)
    assert not isinstance(info.value, S.NonFiniteEmbeddingError)
    g = _gram()
    g[0, 1] = float("nan")
    with pytest.raises(S.NonFiniteEmbeddingError, match="not finite"):
        S.eigh(g, True)


def test_the_svd_path_reports_a_non_finite_embedding_as_one():
    e = torch.randn(64, 64)  # near-square: torch's svdvals, not the Gram matrix
    e[3, 5] = float("nan")
    assert S.uses_svd(64, 64)
    with pytest.raises(S.NonFiniteEmbeddingError):
        S.mean_singular_value(e)


def test_a_run_whose_solvers_fail_on_the_first_calls_finishes_done(smoke_cfg, monkeypatch):
    """The SVMax arm, a few steps: float32 fails on its first three solves, float64 on its first
    (so the first solve goes on to the SVD). Every planned failure is hit; the run is done."""
    cfg = smoke_cfg("objective=svmax", "pretrain.epochs=1", "pretrain.steps_per_epoch=3")
    calls = failing_solvers(monkeypatch, {torch.float32: 3, torch.float64: 1})
    status = run_one(cfg)
    assert status["state"] == "done", status
    assert calls["raised"] == 4 and calls[torch.float32] >= 3


def test_a_run_whose_solver_fails_everywhere_failed_and_did_not_diverge(smoke_cfg, monkeypatch, tmp_path):
    cfg = smoke_cfg("objective=svmax", "pretrain.epochs=1", "pretrain.steps_per_epoch=2")
    failing_solvers(monkeypatch, {torch.float32: -1, torch.float64: -1}, also_svd=True)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.backbone, cfg.dataset.in_channels, cfg.dataset.num_classes)
    train = load_split(cfg.paths.data, "fashion_mnist", train=True)
    with pytest.raises(RuntimeError, match="eigensolver failed") as info:
        P.pretrain(cfg, model, train, tmp_path / "x.pt", progress=False)
    assert not isinstance(info.value, P.DivergedError)
    status = run_one(cfg)
    assert status["state"] == "failed" and "eigensolver failed on a finite" in status["error"], status


def test_an_svd_failing_on_a_finite_square_embedding_fails_the_run_and_does_not_diverge(smoke_cfg, monkeypatch):
    """Near-square shapes (here 64 x 64) take torch's SVD: its failure on finite input is no
    divergence either."""
    cfg = smoke_cfg("objective=svmax", "optim.batch_size=64", "pretrain.epochs=1", "pretrain.steps_per_epoch=2")
    assert S.uses_svd(64, 64)

    def no_svd(a, *args, **kwargs):
        raise torch.linalg.LinAlgError("linalg.svd: the algorithm failed to converge (patched)")

    monkeypatch.setattr(torch.linalg, "svdvals", no_svd)
    status = run_one(cfg)
    assert status["state"] == "failed" and "LinAlgError" in status["error"], status
