"""Collapse metrics against a float64 NumPy reference and on embeddings whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from embreg import metrics as M

SHAPES = [(8, 4), (4, 8), (32, 16), (16, 64), (64, 64)]
KEYS = {"s_mu", "s_mu_lower", "s_mu_upper", "s_mu_score", "rankme", "std_l2", "frac_dead_dims_l2", "mean_abs_corr",
        "frac_dead_dims", "dim"}


def gaussian(n: int, d: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((n, d)))


# --------------------------------------------------------------- NumPy reference (float64)
def np_s_mu(e: np.ndarray) -> float:
    n = e / np.linalg.norm(e, axis=1, keepdims=True)
    return float(np.linalg.svd(n, compute_uv=False).mean())


def np_rankme(e: np.ndarray) -> float:
    s = np.linalg.svd(e, compute_uv=False)
    p = s / s.sum()
    p = p[p > 0]
    return float(np.exp(-np.sum(p * np.log(p))))


def np_mean_abs_corr(e: np.ndarray) -> float:
    d = e.shape[1]
    c = np.corrcoef(e, rowvar=False)
    return float(np.abs(c[~np.eye(d, dtype=bool)]).mean())


def np_frac_dead(e: np.ndarray, thr: float = 1e-2) -> float:
    return float(np.mean(np.std(e, axis=0, ddof=1) < thr))


def np_direction_std(e: np.ndarray) -> np.ndarray:
    n = e / np.linalg.norm(e, axis=1, keepdims=True)
    return np.std(n, axis=0, ddof=1) * np.sqrt(e.shape[1])


# ----------------------------------------------------------------------- against NumPy
@pytest.mark.parametrize("shape", SHAPES)
def test_collapse_metrics_match_numpy(shape):
    n, d = shape
    e = gaussian(n, d, seed=1) + 0.3
    m = M.collapse_metrics(e)
    assert set(m) == KEYS
    k = min(n, d)
    lower, upper = math.sqrt(n) / k, math.sqrt(n / k)
    s_mu = np_s_mu(e.numpy())
    assert m["dim"] == d
    assert m["s_mu"] == pytest.approx(s_mu, rel=1e-10)
    assert m["s_mu_lower"] == pytest.approx(lower, rel=1e-12)
    assert m["s_mu_upper"] == pytest.approx(upper, rel=1e-12)
    assert m["s_mu_score"] == pytest.approx((s_mu - lower) / (upper - lower), rel=1e-9)
    # the eps inside rankme (1e-7 on each p) moves it by O(k * 1e-7 * log 1e7)
    assert m["rankme"] == pytest.approx(np_rankme(e.numpy()), rel=1e-4)
    assert m["frac_dead_dims"] == np_frac_dead(e.numpy()) == 0.0
    assert m["mean_abs_corr"] == pytest.approx(np_mean_abs_corr(e.numpy()), rel=1e-6)
    std = np_direction_std(e.numpy())
    assert m["std_l2"] == pytest.approx(float(std.mean()), rel=1e-10)
    assert m["frac_dead_dims_l2"] == float(np.mean(std < 1e-2)) == 0.0


def test_a_collapsed_embedding_with_varied_lengths_is_reported_by_every_direction_metric():
    """Every row points one way, lengths spread over two decades: the raw per-dimension std is
    large (the raw dead-dimension count says 0, which is why it is marked raw), yet every
    direction-based measure reports the collapse; a spread embedding of the same lengths does not."""
    rng = np.random.default_rng(3)
    n, d = 256, 64
    u = rng.standard_normal(d)
    lengths = 10 ** rng.uniform(-1, 1, size=(n, 1))
    collapsed = torch.from_numpy(lengths * u / np.linalg.norm(u) + 1e-9 * rng.standard_normal((n, d)))
    m = M.collapse_metrics(collapsed)
    assert float(collapsed.std(0).mean()) > 0.05 and m["frac_dead_dims"] < 0.5  # raw std: fooled by lengths
    assert m["s_mu_score"] < 1e-3 and m["rankme"] < 1.1
    assert m["std_l2"] < 1e-6 and m["frac_dead_dims_l2"] == 1.0 and m["mean_abs_corr"] > 0.999
    spread = torch.from_numpy(lengths * rng.standard_normal((n, d)))
    h = M.collapse_metrics(spread)
    assert h["s_mu_score"] > 0.5 and h["rankme"] > 30 and h["std_l2"] > 0.9 and h["frac_dead_dims_l2"] == 0.0
    assert h["mean_abs_corr"] < 0.2


@pytest.mark.parametrize("shape", SHAPES)
def test_rankme_matches_numpy_and_is_scale_free(shape):
    e = gaussian(*shape, seed=2)
    r = M.rankme(e)
    assert r == pytest.approx(np_rankme(e.numpy()), rel=1e-4)
    assert 1.0 < r <= min(shape) + 1e-6
    assert M.rankme(7.0 * e) == pytest.approx(r, rel=1e-6)


def test_metrics_accept_float32():
    e = gaussian(64, 16, seed=3)
    m32, m64 = M.collapse_metrics(e.float()), M.collapse_metrics(e)
    for key in KEYS:
        assert m32[key] == pytest.approx(m64[key], rel=1e-5, abs=1e-6)
        assert isinstance(m32[key], (float, int))


# ------------------------------------------------------------------------ known answers
def test_isotropic_gaussian_is_not_collapsed():
    d = 32
    m = M.collapse_metrics(gaussian(2000, d, seed=4))
    assert m["s_mu_score"] > 0.9
    assert m["s_mu_lower"] < m["s_mu"] <= m["s_mu_upper"]
    assert m["rankme"] > 0.9 * d
    assert m["frac_dead_dims"] == 0.0
    assert m["mean_abs_corr"] < 0.05


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", ["same_rows", "multiples"])
def test_rank_one_is_collapsed(shape, kind):
    n, d = shape
    v = torch.linspace(0.5, 2.0, d, dtype=torch.float64)
    coef = (
        torch.ones(n, dtype=torch.float64)
        if kind == "same_rows"
        else torch.linspace(1.0, 3.0, n, dtype=torch.float64)
    )
    e = coef[:, None] * v[None, :]
    m = M.collapse_metrics(e)
    assert m["rankme"] == pytest.approx(1.0, abs=1e-3)
    assert m["s_mu"] == pytest.approx(m["s_mu_lower"], rel=1e-9)
    assert m["s_mu_score"] == pytest.approx(0.0, abs=1e-9)
    if kind == "same_rows":
        assert m["frac_dead_dims"] == 1.0  # every column constant
        assert m["mean_abs_corr"] == pytest.approx(0.0, abs=1e-12)  # constant: uncorrelated
    else:
        assert m["mean_abs_corr"] == pytest.approx(1.0, abs=1e-6)  # columns all proportional


@pytest.mark.parametrize(("n", "d"), [(8, 4), (4, 8), (64, 64), (64, 16)])
def test_flat_spectrum_scores_one(n, d):
    e = (
        torch.eye(n, d, dtype=torch.float64)
        if n <= d
        else torch.eye(d, dtype=torch.float64).repeat(n // d, 1)
    )
    m = M.collapse_metrics(3.0 * e)
    assert m["s_mu"] == pytest.approx(m["s_mu_upper"], rel=1e-10)
    assert m["s_mu_score"] == pytest.approx(1.0, abs=1e-9)
    assert m["rankme"] == pytest.approx(min(n, d), rel=1e-4)


@pytest.mark.parametrize("d", [4, 8, 32])
def test_half_constant_columns_are_dead(d):
    e = gaussian(100, d, seed=5)
    e[:, : d // 2] = torch.arange(d // 2, dtype=torch.float64)  # a different constant per column
    m = M.collapse_metrics(e)
    assert m["frac_dead_dims"] == 0.5


def test_dead_threshold_uses_std():
    e = gaussian(500, 4, seed=6)
    e[:, 0] *= 1e-3  # std ~ 1e-3 < 1e-2: dead
    e[:, 1] *= 0.1  # std ~ 0.1: alive
    assert M.DEAD_STD == 1e-2
    assert M.collapse_metrics(e)["frac_dead_dims"] == 0.25


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_perfectly_correlated_columns(sign):
    x = gaussian(50, 1, seed=7)
    e = torch.cat([x, sign * 3.0 * x + 2.0], dim=1)
    assert M.mean_abs_offdiag_corr(e) == pytest.approx(1.0, abs=1e-7)


def test_mean_abs_corr_known_value():
    # three columns: x, x, and an independent-by-construction y orthogonal to x after centering
    x = torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64)
    y = torch.tensor([1.0, 1.0, -1.0, -1.0], dtype=torch.float64)
    e = torch.stack([x, x, y], dim=1)
    # |corr| off-diagonal: (x,x) = 1 twice, (x,y) = 0 four times -> 2 / 6
    assert M.mean_abs_offdiag_corr(e) == pytest.approx(1 / 3, abs=1e-7)


def test_mean_abs_corr_single_column_and_constant():
    assert M.mean_abs_offdiag_corr(gaussian(10, 1)) == 0.0
    e = gaussian(20, 3, seed=8)
    e[:, 1] = 5.0
    expected = 2 * abs(float(np.corrcoef(e[:, 0].numpy(), e[:, 2].numpy())[0, 1])) / 6
    assert M.mean_abs_offdiag_corr(e) == pytest.approx(expected, rel=1e-6)


def test_single_dimension_score_is_nan():
    m = M.collapse_metrics(gaussian(10, 1))
    assert m["s_mu_lower"] == m["s_mu_upper"]
    assert math.isnan(m["s_mu_score"])


# ----------------------------------------------------------------------------- spectrum
@pytest.mark.parametrize("shape", SHAPES)
def test_spectrum_normalized_and_descending(shape):
    e = gaussian(*shape, seed=9)
    k = min(shape)
    s = M.spectrum(e, k)
    assert len(s) == k
    assert s[0] == 1.0
    assert all(a >= b for a, b in zip(s, s[1:], strict=False))
    ref = np.linalg.svd(e.numpy() / np.linalg.norm(e.numpy(), axis=1, keepdims=True), compute_uv=False)
    np.testing.assert_allclose(s, ref / ref[0], rtol=1e-10)
    assert M.spectrum(e, 2) == s[:2]


def test_spectrum_flat_and_rank_one():
    assert M.spectrum(torch.eye(8, dtype=torch.float64), 8) == pytest.approx([1.0] * 8)
    s = M.spectrum(torch.ones(8, 4, dtype=torch.float64), 4)
    assert s[0] == 1.0
    assert max(s[1:]) < 1e-12


# ------------------------------------------------- Gram eigenvalues against the SVD they replace
def svd_collapse(e: torch.Tensor, k: int) -> dict[str, object]:
    """The SVD-based values the Gram path replaces (torch.linalg.svdvals, float64)."""
    e = e.double()
    n, d = e.shape
    s = torch.linalg.svdvals(torch.nn.functional.normalize(e, dim=1))
    lower, upper = math.sqrt(n) / min(n, d), math.sqrt(n / min(n, d))
    raw = torch.linalg.svdvals(e)
    p = raw / (raw.sum() + 1e-7) + 1e-7
    return {"s_mu": float(s.mean()), "s_mu_score": (float(s.mean()) - lower) / (upper - lower),
            "rankme": float(torch.exp(-(p * p.log()).sum())), "spectrum": (s / s[0])[:k].tolist()}


def low_rank(n: int, d: int, r: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, r, generator=g, dtype=torch.float64) @ torch.randn(r, d, generator=g, dtype=torch.float64)


CASES = {
    "random": lambda n, d: gaussian(n, d, seed=11) + 0.2,
    "low_rank": lambda n, d: low_rank(n, d, 3, seed=12),
    "rank_one": lambda n, d: torch.linspace(1.0, 3.0, n, dtype=torch.float64)[:, None]
    * torch.linspace(-1.0, 2.0, d, dtype=torch.float64)[None, :],
}


@pytest.mark.parametrize("shape", [(8, 4), (4, 8), (64, 64), (300, 40), (40, 300)])
@pytest.mark.parametrize("case", list(CASES))
def test_gram_spectrum_matches_svd(shape, case):
    e = CASES[case](*shape)
    k = min(shape)
    ref = svd_collapse(e, k)
    m = M.collapse_metrics(e)
    assert m["s_mu"] == pytest.approx(ref["s_mu"], rel=1e-9)
    assert m["s_mu_score"] == pytest.approx(ref["s_mu_score"], rel=1e-9, abs=1e-9)
    assert m["rankme"] == pytest.approx(ref["rankme"], rel=1e-9)
    np.testing.assert_allclose(M.spectrum(e, k), ref["spectrum"], rtol=1e-9, atol=1e-9)
    assert len(M.row_singular_values(e)) == k


def test_collapse_report_shares_one_decomposition():
    """evaluate.collapse_report gives what the two public functions give on their own."""
    from embreg.metrics import collapse_report

    feats = {"a": gaussian(50, 20, seed=13), "b": CASES["low_rank"](30, 60)}
    metrics, spectra = collapse_report(feats, 5)
    for name, e in feats.items():
        assert metrics[name] == M.collapse_metrics(e)
        assert spectra[name] == M.spectrum(e, 5)


def test_singular_values_floor_noise_only():
    """Rank one: the k - 1 rounding-noise values are exactly 0; a real singular value 1e-4 of
    the largest is kept."""
    s = M.singular_values(CASES["rank_one"](64, 32))
    assert s[0] > 0 and torch.count_nonzero(s[1:]) == 0
    e = torch.diag(torch.tensor([1.0, 1e-4], dtype=torch.float64))
    torch.testing.assert_close(M.singular_values(e), torch.tensor([1.0, 1e-4], dtype=torch.float64))
