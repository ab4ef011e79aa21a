"""Collapse as a primary outcome: per-ablation, per-layer collapse tables and the b-versus-d regime.

The regime matters for SVMax: its normalized score places the mean singular value of a batch's
l2-normalized embeddings (b x d) between L = sqrt(b) / k and U = sqrt(b / k), k = min(b, d). At
b < d a random Gaussian batch already sits near U, so the term mostly pushes the batch's rows
towards orthogonality; at b > d it spreads the d dimensions (the SVMax paper's setting).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import pandas as pd

from embreg.analysis.aggregate import Results, regularizer_terms
from embreg.analysis.cells import NO_VALUE, Table, metric_cell, row_n
from embreg.analysis.compare import COLLAPSE_METRICS, Comparison, embeddings
from embreg.analysis.references import is_pixels
from embreg.analysis.tables import method_cell

REGIME_SEED = 0
# (header, suffix after "<embedding>_", decimals); L and U depend only on (n, d): shown as one value
COLLAPSE_COLUMNS: list[tuple[str, str, int]] = [
    ("RankMe", "rankme", 1), ("normalized score", "s_mu_score", 3), ("s_mu", "s_mu", 3),
    ("std (l2, x sqrt d)", "std_l2", 3), ("dead dims (l2)", "frac_dead_dims_l2", 3),
    ("mean abs corr", "mean_abs_corr", 3), ("dead dims (raw)", "frac_dead_dims", 3),
]
assert {s for _, s in COLLAPSE_METRICS} <= {s for _, s, _ in COLLAPSE_COLUMNS}


def svmax_bounds(b: int, d: int) -> tuple[float, float]:
    """SVMax's bounds on the mean singular value of a b x d matrix with unit rows: (L, U)."""
    k = min(b, d)
    return math.sqrt(b) / k, math.sqrt(b / k)


@lru_cache(maxsize=64)
def random_batch_score(b: int, d: int, seed: int = REGIME_SEED) -> float:
    """The normalized score (s_mu - L) / (U - L) of one seeded Gaussian b x d batch with l2-normalized rows."""
    x = np.random.default_rng(seed).standard_normal((b, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    s_mu = float(np.linalg.svd(x, compute_uv=False).mean())  # k = min(b, d) singular values
    lower, upper = svmax_bounds(b, d)
    return (s_mu - lower) / (upper - lower)


def _bound(results: Results, run_id: str, key: str) -> str:
    vals = results.values(run_id, key)
    return f"{vals[0]:.3f}" if vals else NO_VALUE


def collapse_table(results: Results, name: str, runs: list[str], comps: list[Comparison]) -> Table:
    """Per run (pixels excluded: no embedding) and embedding: the collapse metrics, mean [95% CI], ``†`` marks."""
    title = f"{results.manifest['ablations'][name].get('title', name)}: collapse per layer (test set)"
    table = Table(f"{name}_collapse", title, pd.DataFrame())
    marked = {(c.arm, c.metric) for c in comps if c.significant}
    rows = []
    members = [r for r in runs if not is_pixels(results, r)]
    layers = embeddings(results, members)
    for m in members:
        for emb in layers or ["projector"]:
            keys = [f"{emb}_{s}" for _, s, _ in COLLAPSE_COLUMNS]
            n_text, per_cell = row_n(results, m, keys)
            cells = [metric_cell(results, m, f"{emb}_{s}", table.notes, dec, per_cell, (m, f"{emb}_{s}") in marked)
                     for _, s, dec in COLLAPSE_COLUMNS]
            dim = results.values(m, f"{emb}_dim")
            rows.append([method_cell(results, m, table.notes), emb, *cells,
                         _bound(results, m, f"{emb}_s_mu_lower"), _bound(results, m, f"{emb}_s_mu_upper"),
                         f"{dim[0]:.0f}" if dim else NO_VALUE, n_text])
    table.frame = pd.DataFrame(rows, columns=["method", "embedding", *[c[0] for c in COLLAPSE_COLUMNS],
                                              "L", "U", "dim", "n"])
    return table


def regularized(results: Results, run_id: str) -> list[str]:
    """The embeddings the run's regularizer acts on: the projector, plus every stage when ``layers: all``."""
    coeffs = results.config_value(run_id, "objective.terms") or {}
    regs = regularizer_terms()
    if not any(isinstance(v, int | float) and v > 0 and k in regs for k, v in coeffs.items()):
        return []
    if results.config_value(run_id, "objective.layers") == "all":
        return embeddings(results, [run_id])
    return ["projector"]


def regime_rows(results: Results, runs: list[str]) -> list[dict[str, object]]:
    """Per regularized (run, embedding): batch b, dimension d, the regime and a random batch's score."""
    rows = []
    for rid in runs:
        b = results.config_value(rid, "optim.batch_size")
        for emb in regularized(results, rid):
            dims = results.values(rid, f"{emb}_dim")
            if not isinstance(b, int) or not dims:
                continue
            d = int(dims[0])
            rows.append({"run": rid, "embedding": emb, "b": b, "d": d, "regime": "b < d" if b < d else "b ≥ d",
                         "random_score": random_batch_score(b, d)})
    return rows


def regime_table(results: Results, runs: list[str]) -> Table:
    """The b-versus-d regime each regularizer trained in, with the score a random batch of that shape gets."""
    table = Table("regime", "Batch vs embedding dimension of each regularized embedding", pd.DataFrame())
    rows = [[r["run"], r["embedding"], str(r["b"]), str(r["d"]), r["regime"], f"{r['random_score']:.3f}"]
            for r in regime_rows(results, runs)]
    table.frame = pd.DataFrame(rows, columns=["run", "embedding", "batch b", "dim d", "regime",
                                              "random Gaussian batch: normalized score"])
    return table
