"""The robustness studies' tables and REPORT sections (numbers from :mod:`embreg.analysis.studies`).

Every bare number of a verdict line is a statistic that summary.json holds under ``studies``.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from embreg.analysis.aggregate import Results
from embreg.analysis.cells import Table, fmt_effect, metric_cell, num
from embreg.analysis.compare import Comparison
from embreg.analysis.references import PIXELS, RANDOM_INIT, budget_steps
from embreg.analysis.stats import BORDERLINE, fmt_p
from embreg.analysis.studies import (
    BATCH_SIZE,
    EMBEDDING_USE,
    LEARNING_RATE,
    USABLE,
    StudyResult,
    arm_kind,
    changes_from_first,
    seed_counts,
)
from embreg.analysis.tables import metric_decimals, tests_table

# (header, key, decimals)
LR_COLUMNS = [("linear top-1", "linear_top1", 1), ("kNN-20 top-1", "knn20_top1", 1),
              ("recall@1 (held-out)", "recall_at_1", 1), ("backbone recall@1", "backbone_recall_at_1", 1),
              ("embedding score", "projector_s_mu_score", 3), ("embedding RankMe", "projector_rankme", 1)]
BATCH_COLUMNS = [("embedding s_mu", "projector_s_mu", 3), ("L", "projector_s_mu_lower", 3),
                 ("U", "projector_s_mu_upper", 3), ("normalized score", "projector_s_mu_score", 3),
                 ("embedding RankMe", "projector_rankme", 1), ("linear top-1", "linear_top1", 1),
                 ("recall@1 (held-out)", "recall_at_1", 1)]


def _seeds_cell(results: Results, rid: str) -> str:
    c = seed_counts(results, rid)
    extra = "".join([f", {c['diverged']} diverged" if c["diverged"] else "",
                     f", {c['other']} not finished" if c["other"] else ""])
    return f"{c['done']}/{c['seeds']}{extra}"


def _cell(results: Results, rid: str, key: str, decimals: int, table: Table) -> str:
    """A metric cell; the bounds L and U depend only on the evaluation's shape: their mean, no interval."""
    vals = results.values(rid, key)
    if key.endswith(("_lower", "_upper")) and vals:
        return num(sum(vals) / len(vals), decimals)
    return metric_cell(results, rid, key, table.notes, decimals)


def study_table(results: Results, study: StudyResult, title: str) -> Table:
    """One row per (arm, point): seeds finished / diverged, then the study's metric cells."""
    table = Table(study.name, title, pd.DataFrame())
    lr = study.kind == LEARNING_RATE
    columns = LR_COLUMNS if lr else BATCH_COLUMNS
    rows = []
    refs = [r for r in (PIXELS, RANDOM_INIT) if lr and r in results.runs]
    for rid in refs:
        rows.append([rid, "—", "—", _seeds_cell(results, rid), *[_cell(results, rid, k, d, table) for _, k, d in columns]])
    for p in study.points:
        if lr:
            setting = [f"{p.x:g}x", f"{results.config_value(p.run_id, 'optim.lr'):g}"]
        else:
            steps = budget_steps(results, p.run_id)
            setting = [f"{p.x:g}", f"{steps} ({steps * int(p.x)} images)" if steps else "?"]
        rows.append([p.arm, *setting, _seeds_cell(results, p.run_id),
                     *[_cell(results, p.run_id, k, d, table) for _, k, d in columns]])
    head = ["arm", "lr multiple", "lr"] if lr else ["arm", "batch b", "steps"]
    table.frame = pd.DataFrame(rows, columns=[*head, "seeds finished", *[c[0] for c in columns]])
    return table


def change_table(results: Results, study: StudyResult) -> Table:
    """How much each arm's usable-embedding metric changes from 1x (Welch, uncorrected, descriptive)."""
    table = Table(f"{study.name}_change", "Change from the arm's own learning rate (1x), mean difference [95% CI]",
                  pd.DataFrame())
    xs = [x for x in study.xs() if x > 1.0]
    rows = []
    for arm in study.arms():
        label, key = USABLE.get(arm_kind(results, arm), USABLE["ssl"])
        ch = changes_from_first(results, study, arm, key)
        rows.append([arm, label, *[fmt_effect(ch[x], metric_decimals(key)) if x in ch and not math.isnan(ch[x].effect)
                                   else "—" for x in xs]])
    table.frame = pd.DataFrame(rows, columns=["arm", "metric", *[f"{x:g}x" for x in xs]])
    table.remark = ("Each cell: the arm at that multiple minus the arm at 1x (Welch 95% CI, not corrected); `—`: no "
                    "finished seed at that point (see the seeds column above).")
    return table


def study_tables(results: Results, study: StudyResult, title: str) -> list[Table]:
    tables = [study_table(results, study, title),
              tests_table(f"{study.name}_tests", f"{title}: tests, Holm-corrected across the study", study.tests)]
    if study.kind == LEARNING_RATE:
        tables.append(change_table(results, study))
    return tables


def _test_text(c: Comparison, where: str) -> str:
    if math.isnan(c.test.effect):
        return f"`{where}`: untestable (a point without finished seeds)"
    return (f"`{where}`: {fmt_effect(c.test, metric_decimals(c.metric))}, p (Holm) = {fmt_p(c.p_holm)}"
            + (f" ({BORDERLINE})" if c.borderline else ""))


def _x_of(c: Comparison) -> str:
    return c.label.rsplit(" at ", 1)[-1]


def verdict_lines(results: Results, study: StudyResult) -> list[str]:
    """One line per tested pair: the verdict, then every test behind it (and the divergence counts)."""
    out = []
    for (arm, ref), v in study.verdicts.items():
        mine = [c for c in study.tests if (c.arm, c.reference) == (arm, ref)]
        label = mine[0].label.rsplit(":", 1)[0] if mine and study.kind == LEARNING_RATE else EMBEDDING_USE[0]
        tests = "; ".join(_test_text(c, _x_of(c)) for c in mine) or "no testable point"
        mark = f" ({BORDERLINE}: it rests on a test marked so)" if v.get("borderline") else ""
        line = f"`{arm}` vs `{ref}` (`{label}`): **{v['verdict']}**{mark}. "
        if study.kind == LEARNING_RATE:
            d = study.divergence[(arm, ref)]
            fisher = "no seed diverged" if math.isnan(d["p"]) else f"Fisher's exact p = {fmt_p(d['p'])}"
            line += (f"Change from `1x`, `{arm}` minus `{ref}`: {tests}. Diverged seeds beyond `1x`: `{arm}` "
                     f"{d['arm_diverged']} of {d['arm_seeds']}, `{ref}` {d['ref_diverged']} of {d['ref_seeds']} ({fisher}).")
        else:
            line += f"`{arm}` minus `{ref}` at each batch size: {tests}."
        out.append(line)
    return out or ["no pair of arms to test (an arm is missing from the study)."]


def spearman_lines(study: StudyResult) -> list[str]:
    names = {"projector_s_mu_score": "the embedding's normalized score", "backbone_s_mu_score":
             "the backbone's normalized score", "linear_top1": "linear top-1"}
    out = []
    for s in study.spearman:
        what = f"Spearman's rank correlation between {names.get(s['x'], s['x'])} and {names.get(s['y'], s['y'])}"
        if math.isnan(s["rho"]):
            out.append(f"{what}: undefined over the study's {s['n']} finished seeds (fewer than three, or one of "
                       "the two is constant).")
        else:
            out.append(f"{what} over the study's {s['n']} finished seeds: rho = {num(s['rho'], 2, sign=True)}, "
                       f"p = {fmt_p(s['p'])}.")
    return out


HOW_TO_READ = (
    "Each study trains every arm at several settings of one knob and reports, per arm and setting, the mean over "
    "the finished seeds with its 95% Student-t interval [low, high]; *seeds finished* says how many of the "
    "expected seeds finished and how many diverged (loss or weights became NaN or inf: a marked cell and a red x "
    "in the plot, never a gap). Accuracies are top-1 percentages on the test set (*linear*: a linear probe on the "
    "frozen backbone; *kNN-20*: 20 nearest neighbours on it). *recall@1 (held-out)* is retrieval on the test "
    "images of the classes the metric-learning arms never see in training (the class-disjoint split of the "
    "dataset card), on the embedding; *backbone recall@1* the same on the backbone's features. The *embedding "
    "score* places the mean singular value s_mu of the l2-normalized test embeddings between its lower bound L "
    "(0: one direction) and upper bound U (1: maximally spread); *RankMe* is the embedding's effective rank. "
    "References: `pixels` (the same probe, kNN and retrieval on the standardized raw pixels) and `random_init` "
    "(the untrained network). `—` with a superscript number has no value (see the footnote); `— (by design)` was "
    "never meant to have one."
)

RULES = {
    LEARNING_RATE: "Verdict rule: **supported** when at least one multiple resolves the SVMax arm changing less (or "
                   "gaining more) than its counterpart, or Fisher's test resolves fewer diverged seeds, and nothing "
                   "resolves the opposite; **contradicted** when only the opposite is resolved; otherwise "
                   "**not resolved at this scale**. Tests are Holm-corrected across the study (adjusted p < 0.05).",
    BATCH_SIZE: "Verdict rule (\"markedly better at every batch size\"): **supported** when the SVMax arm's embedding "
                "s_mu is higher at every batch size, each difference resolved (Welch, Holm across the study, "
                "adjusted p < 0.05); **contradicted** when it is resolved lower at any batch size; otherwise "
                "**not resolved at this scale**.",
}


def study_section(results: Results, study: StudyResult, abl: dict[str, Any], tables: dict[str, Table],
                  image: str) -> list[str]:
    """A study's REPORT section: question, table, plot, tests, verdicts and rank correlations."""
    out = [f"## {abl.get('title', study.name)}", "", f"**Question:** {abl.get('question', '')}", "",
           tables[study.name].markdown(), image, "", f"Tests ({tables[study.name + '_tests'].title}):", "",
           tables[f"{study.name}_tests"].markdown()]
    if f"{study.name}_change" in tables:
        out += ["How much each arm itself changes:", "", tables[f"{study.name}_change"].markdown()]
    out += ["### Verdicts (computed from the tests above)", "", RULES.get(study.kind, ""), "",
            *[f"- {line}" for line in verdict_lines(results, study)], "",
            *[f"- {line}" for line in spearman_lines(study)], ""]
    return out


def study_summary(study: StudyResult) -> dict[str, Any]:
    """summary.json's ``studies.<name>``: tests, verdicts, divergence counts and rank correlations."""
    return {"kind": study.kind,
            "tests": {f"{c.pair} | {c.label}": c.as_dict() for c in study.tests},
            "verdicts": {f"{a} vs {r}": v for (a, r), v in study.verdicts.items()},
            "divergence": {f"{a} vs {r}": d for (a, r), d in study.divergence.items()},
            "spearman": study.spearman}
