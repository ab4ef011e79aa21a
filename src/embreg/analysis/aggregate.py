"""Read the run directories into one in-memory view, and the statistics over seeds.

Everything here tolerates a broken sweep: a seed directory that is missing, unreadable, failed,
diverged or still running becomes a :class:`SeedRun` whose ``state`` says so (with the error from
its ``status.json``), never an exception, so the tables can mark the cell instead of crashing.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embreg.rundir import State

DONE = State.DONE
# The embeddings the collapse metrics are reported for, in network order (layer4 is the
# backbone output, so it normally appears as "backbone" rather than "layer4").
LAYER_ORDER = ("layer1", "layer2", "layer3", "layer4", "backbone", "projector")
# Keys a run omits by design when it is never fine-tuned / never pretrained (see analysis.references).
SEMI_KEYS = ("semi_1pct_top1", "semi_1pct_top5", "semi_10pct_top1", "semi_10pct_top5")
COST_KEYS = ("steps", "sec_per_step", "images_per_sec", "peak_memory_mb")
_SEED_DIR = re.compile(r"^seed(\d+)$")


@dataclass
class SeedRun:
    """One seed of one run as found on disk; ``metrics`` is flat and empty unless done."""

    run_id: str
    seed: int
    state: str
    error: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    config: dict[str, Any] | None = None
    history: list[dict[str, Any]] | None = None
    spectra: dict[str, list[float]] | None = None
    seconds: float | None = None

    @property
    def ok(self) -> bool:
        return self.state == DONE


def _read_json(path: Path) -> Any:
    """JSON or None when absent; raises ValueError (with the file name) when unreadable."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"unreadable {path.name}: {exc}") from exc


def _read_yaml(path: Path) -> dict[str, Any] | None:
    """The run's resolved config; None when absent or unreadable (it only feeds sweep bases)."""
    try:
        import yaml

        data = yaml.safe_load(path.read_text()) if path.is_file() else None
    except Exception:  # noqa: BLE001 - a bad config must not stop the analysis
        return None
    return data if isinstance(data, dict) else None


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def flatten_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Numeric top-level keys as they are, plus ``collapse.<emb>.<k>`` as ``<emb>_<k>``."""
    # "seed" is the run's identity, not a metric (averaging it would be meaningless)
    flat = {k: float(v) for k, v in metrics.items() if _is_number(v) and k != "seed"}
    for emb, stats in (metrics.get("collapse") or {}).items():
        if isinstance(stats, dict):
            flat.update({f"{emb}_{k}": float(v) for k, v in stats.items() if _is_number(v)})
    return flat


def load_seed(run_id: str, seed: int, seed_dir: Path, manifest_state: str | None) -> SeedRun:
    """Read one seed directory; every failure mode becomes a state, not an exception."""
    run = SeedRun(run_id, seed, state=State.MISSING, config=_read_yaml(seed_dir / "config.yaml"))
    if not seed_dir.is_dir():
        run.error = "no run directory"
        return run
    try:
        status = _read_json(seed_dir / "status.json")
        if status is None:
            run.error = "no status.json"
            return run
        run.state, run.error = status.get("state", State.MISSING), status.get("error")
        run.seconds = status.get("seconds")
        if run.state == DONE and manifest_state == State.STALE:
            # finished, but under another config or code version than the sweep now expects
            run.state, run.error = State.STALE, "trained with another config or code version"
            return run
        if run.state == DONE and manifest_state not in (None, DONE, "incomplete", "unknown"):
            # an older result kept while its retraining failed or stopped (embreg.attempt)
            run.state, run.error = manifest_state, f"its latest attempt is {manifest_state}; this result is older"
            return run
        if run.state != DONE:
            return run
        metrics = _read_json(seed_dir / "metrics.json")
        if metrics is None:
            run.state, run.error = State.FAILED, "state is done but metrics.json is missing"
            return run
        run.metrics = flatten_metrics(metrics)
        run.history = _read_json(seed_dir / "history.json")
        run.spectra = _read_json(seed_dir / "spectra.json")
    except ValueError as exc:
        run.state, run.error, run.metrics = State.FAILED, str(exc), {}
    return run


def discover_manifest(runs_dir: Path) -> dict[str, Any]:
    """A manifest built from the directories alone, for a sweep that never wrote one."""
    runs: dict[str, dict[str, str]] = {}
    if runs_dir.is_dir():
        for rd in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
            seeds = {m.group(1): "unknown" for p in rd.iterdir() if (m := _SEED_DIR.match(p.name))}
            if seeds:
                runs[rd.name] = seeds
    return {"profile": "unknown", "ablations": {}, "runs": runs, "discovered": True}


def load_manifest(results_dir: Path) -> dict[str, Any]:
    """``runs/manifest.json``, or one discovered from the run directories when absent/broken."""
    path = results_dir / "runs" / "manifest.json"
    try:
        manifest = _read_json(path)
    except ValueError:
        manifest = None
    if not isinstance(manifest, dict):
        return discover_manifest(results_dir / "runs")
    manifest.setdefault("profile", "unknown")
    manifest.setdefault("ablations", {})
    manifest.setdefault("runs", {})
    return _in_order(manifest)


def _in_order(manifest: dict[str, Any]) -> dict[str, Any]:
    """``manifest`` with its ablations in the profile's order (its ``order``; a manifest without
    one keeps the order it was read in)."""
    abls = manifest.get("ablations", {})
    order = [n for n in manifest.get("order", []) if n in abls]
    manifest["ablations"] = {n: abls[n] for n in [*order, *(n for n in abls if n not in order)]}
    return manifest


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def ablation_methods(abl: dict[str, Any]) -> list[str]:
    """An ablation's table rows: its baselines first, then its arms."""
    return _unique([*abl.get("baselines", []), *abl.get("arms", [])])


def all_methods(manifest: dict[str, Any]) -> list[str]:
    """Every arm of every ablation, baselines first (the main table's rows)."""
    abls = manifest.get("ablations", {}).values()
    methods = _unique([b for a in abls for b in a.get("baselines", [])] + [r for a in abls for r in a.get("arms", [])])
    if not methods:  # no ablations known (discovered manifest): every non-sweep run
        methods = [r for r in manifest.get("runs", {}) if "@" not in r]
    return methods


def expected_seeds(manifest: dict[str, Any]) -> dict[str, list[int]]:
    """run_id -> seeds the sweep should have produced (ablation seeds united with the manifest).
    Sensitivity points expect the ablation's ``sweep_seeds`` (a profile may give them fewer)."""
    out: dict[str, set[int]] = {}
    for abl in manifest.get("ablations", {}).values():
        seeds = {int(s) for s in abl.get("seeds", [])}
        sweep_seeds = {int(s) for s in abl.get("sweep_seeds", abl.get("seeds", []))}
        for rid in ablation_methods(abl):
            out.setdefault(rid, set()).update(seeds)
        for rid in (r for sw in abl.get("sweeps", []) for r in sw.get("runs", [])):
            out.setdefault(rid, set()).update(sweep_seeds)
    for rid, states in manifest.get("runs", {}).items():
        out.setdefault(rid, set()).update(int(s) for s in states)
    return {rid: sorted(seeds) for rid, seeds in out.items()}


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (ddof=1; NaN below two values) and count."""
    vals = [v for v in values if v is not None and not math.isnan(v)]
    n = len(vals)
    if n == 0:
        return math.nan, math.nan, 0
    mean = sum(vals) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else math.nan
    return mean, std, n


def config_value(config: dict[str, Any] | None, key_path: str) -> Any:
    """``config["objective"]["svmax"]`` for ``"objective.svmax"``; None if any part is absent."""
    node: Any = config
    for part in key_path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


@dataclass
class Results:
    """All runs of a results directory: ``runs[run_id][seed]``."""

    results_dir: Path
    manifest: dict[str, Any]
    runs: dict[str, dict[int, SeedRun]]

    def seeds(self, run_id: str) -> list[SeedRun]:
        return list(self.runs.get(run_id, {}).values())

    def done(self, run_id: str) -> list[SeedRun]:
        return [r for r in self.seeds(run_id) if r.ok]

    def problems(self, run_id: str) -> list[SeedRun]:
        """Expected seeds that did not finish (or the run was never expected nor found)."""
        seeds = self.seeds(run_id)
        return [r for r in seeds if not r.ok] if seeds else [SeedRun(run_id, -1, State.MISSING, "no run found")]

    def values(self, run_id: str, metric: str) -> list[float]:
        """The metric over the finished seeds that report it (NaN dropped)."""
        vals = [r.metrics.get(metric) for r in self.done(run_id)]
        return [v for v in vals if v is not None and not math.isnan(v)]

    def config_value(self, run_id: str, key_path: str) -> Any:
        """The key from the first seed whose config.yaml has it (written even for failed runs)."""
        for r in self.seeds(run_id):
            value = config_value(r.config, key_path)
            if value is not None:
                return value
        return None


def load_results(results_dir: Path) -> Results:
    """Every expected (run, seed) of the manifest plus any other seed directory found on disk."""
    results_dir = Path(results_dir)
    manifest = load_manifest(results_dir)
    runs_dir = results_dir / "runs"
    expected = expected_seeds(manifest)
    if runs_dir.is_dir():  # directories the manifest does not know still get read
        for rd in runs_dir.iterdir():
            found = [int(m.group(1)) for p in rd.glob("seed*") if (m := _SEED_DIR.match(p.name))]
            if found and rd.name in expected:
                expected[rd.name] = sorted(set(expected[rd.name]) | set(found))
    runs: dict[str, dict[int, SeedRun]] = {}
    for rid, seeds in expected.items():
        states = manifest.get("runs", {}).get(rid, {})
        runs[rid] = {s: load_seed(rid, s, runs_dir / rid / f"seed{s}", states.get(str(s))) for s in seeds}
    return Results(results_dir, manifest, runs)


@dataclass
class SweepPoint:
    """One coefficient value of a sweep; ``value`` is None when the base run's config is unreadable."""

    value: float | None
    run_id: str
    is_base: bool


def sweep_points(results: Results, sweep: dict[str, Any]) -> list[SweepPoint]:
    """The swept values plus the arm's own run as the base point, sorted by value (unknown last).

    The base coefficient is read from the arm's config.yaml rather than assumed, so a changed
    default still lands at the right x position.
    """
    base = results.config_value(sweep["arm"], sweep["key"])
    points = [SweepPoint(float(base) if _is_number(base) else None, sweep["arm"], True)]
    points += [SweepPoint(float(v), rid, False) for v, rid in zip(sweep.get("values", []), sweep.get("runs", []), strict=False)]
    return sorted(points, key=lambda p: (p.value is None, p.value or 0.0))


def loss_terms() -> list[str]:
    """The loss terms a run may log, in the registry's order (embreg.terms; its modules are
    imported on the first call)."""
    from embreg import terms

    return terms.names()


def regularizer_terms() -> set[str]:
    """The terms that keep one embedding from collapsing (``Term.regularizer``)."""
    from embreg import terms

    return {t["name"] for t in terms.catalog() if t["regularizer"]}
