"""The reference rows every ablation table carries, and which cells are empty by design.

References: ``pixels`` (linear probe and kNN on the standardized raw pixels, no network),
``random_init`` (the untrained backbone) and ``supervised`` (labelled with its training budget,
read from its config.yaml). A cell is empty *by design* when the run was never meant to produce
it (fine-tuning switched off, a baseline without a pretraining loop or without an embedding),
as opposed to a run that failed; the two get different footnotes.
"""

from __future__ import annotations

from typing import Any

from embreg.analysis.aggregate import COST_KEYS, SEMI_KEYS, Results

PIXELS, RANDOM_INIT, SUPERVISED = "pixels", "random_init", "supervised"
REFERENCES = (PIXELS, RANDOM_INIT, SUPERVISED)
# metrics.json keys of the collapse metrics after flattening end with these
COLLAPSE_SUFFIXES = ("_s_mu", "_s_mu_lower", "_s_mu_upper", "_s_mu_score", "_rankme", "_frac_dead_dims",
                     "_std_l2", "_frac_dead_dims_l2", "_mean_abs_corr", "_dim")

RANDOM_INIT_SEMI = ("no semi-supervised result by design: fine-tuning a random initialization on the 1% / 10% "
                    "labels is exactly the supervised baseline's from-scratch fine-tuning (see its columns).")
NO_PRETRAIN_COST = "no per-step cost by design: this reference is never pretrained."
PIXELS_NO_NETWORK = "by design: raw pixels have no network to fine-tune and no embedding to measure collapse on."
FINETUNE_OFF = ("no fine-tuning by design: this run's config switches semi-supervised evaluation off "
                "(a fine-tune too short to measure the representation would only add noise).")


def kind(results: Results, run_id: str) -> str | None:
    """The run's ``objective.kind`` ("ssl", "supervised", "untrained", "pixels"), from its config.yaml."""
    value = results.config_value(run_id, "objective.kind")
    if value is None:  # no readable config: the reference names are the contract
        base = run_id.split("@")[0]
        return {PIXELS: "pixels", RANDOM_INIT: "untrained", SUPERVISED: "supervised"}.get(base)
    return str(value)


def is_pixels(results: Results, run_id: str) -> bool:
    return kind(results, run_id) == "pixels"


def finetune_off(results: Results, run_id: str) -> bool:
    """Fine-tuning is off by design: ``eval.semi_supervised`` false, or a finished run without semi keys."""
    if results.config_value(run_id, "eval.semi_supervised") is False:
        return True
    done = results.done(run_id)
    return bool(done) and not any(k in r.metrics for r in done for k in SEMI_KEYS)


def by_design(results: Results, run_id: str, metric: str) -> str | None:
    """Why ``metric`` is absent from ``run_id`` by design (the footnote text), or None if it should exist."""
    pixels, untrained = is_pixels(results, run_id), kind(results, run_id) == "untrained"
    if metric in SEMI_KEYS:
        if untrained:
            return f"`{run_id}`: {RANDOM_INIT_SEMI}"
        if pixels:
            return f"`{run_id}`: {PIXELS_NO_NETWORK}"
        if finetune_off(results, run_id):
            return f"`{run_id}`: {FINETUNE_OFF}"
    if (metric in COST_KEYS or metric == "pretrain_seconds") and (pixels or untrained):
        return f"`{run_id}`: {NO_PRETRAIN_COST}"
    if pixels and (metric.endswith(COLLAPSE_SUFFIXES) or metric.startswith("backbone_")):
        return f"`{run_id}`: {PIXELS_NO_NETWORK}"
    return None


def _epochs(results: Results, run_id: str) -> Any:
    """The run's pretraining epochs: ``pretrain.supervised_epochs`` for a supervised run when
    set (it may train longer than the arms), else ``pretrain.epochs`` (as embreg.pretrain does)."""
    own = results.config_value(run_id, "pretrain.supervised_epochs")
    if kind(results, run_id) == "supervised" and isinstance(own, int | float):
        return own
    return results.config_value(run_id, "pretrain.epochs")


def budget_steps(results: Results, run_id: str) -> int | None:
    """Pretraining optimizer steps from config.yaml: epochs x steps_per_epoch (None if not fixed)."""
    epochs = _epochs(results, run_id)
    per_epoch = results.config_value(run_id, "pretrain.steps_per_epoch")
    if isinstance(epochs, int | float) and isinstance(per_epoch, int | float):
        return round(epochs * per_epoch)
    return None


def budget_label(results: Results, run_id: str, ssl_run: str | None) -> str:
    """``"supervised (300 steps; SSL arms 75)"``; ``"(75 steps, equal budget)"`` when the two agree."""
    steps = budget_steps(results, run_id)
    if steps is None:
        epochs = _epochs(results, run_id)
        return f"{run_id} ({epochs:g} epochs)" if isinstance(epochs, int | float) else run_id
    ssl_steps = budget_steps(results, ssl_run) if ssl_run else None
    if ssl_steps is None:
        return f"{run_id} ({steps} steps)"
    if ssl_steps == steps:
        return f"{run_id} ({steps} steps, equal budget)"
    return f"{run_id} ({steps} steps; SSL arms {ssl_steps})"


def row_label(results: Results, run_id: str, ssl_run: str | None) -> str:
    """The method cell's text: supervised runs carry their budget, others their run id."""
    return budget_label(results, run_id, ssl_run) if kind(results, run_id) == "supervised" else run_id
