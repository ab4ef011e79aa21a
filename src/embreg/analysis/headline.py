"""The README's two generated blocks: "Key findings" (a few sentences from every profile's
summary.json: what passes, what is not resolved, the scale caveat, the published claims'
verdicts) and the status table of the profiles (which have committed results, made where).
Every number in them is a statistic summary.json or provenance.json holds; a test regenerates
both from the committed results and compares them with README.md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from embreg.analysis.aggregate import load_manifest
from embreg.analysis.findings import NOT_RESOLVED
from embreg.analysis.stats import fmt_p

ACCURACY = {"linear_top1": "linear top-1", "knn20_top1": "kNN-20 top-1"}
SSL_EXCLUDED = ("pixels", "random_init", "supervised")  # the references of the main table


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _ci(m: dict[str, Any]) -> str:
    return f"{m['mean']:.1f} [{m['ci_low']:.1f}, {m['ci_high']:.1f}]"


def _diff(c: dict[str, Any]) -> str:
    mark = ", borderline" if c.get("borderline") else ""
    return f"{c['effect']:+.1f} [{c['ci_low']:+.1f}, {c['ci_high']:+.1f}] (p Holm = {fmt_p(c['p_holm'])}{mark})"


def scale_sentence(summary: dict[str, Any]) -> str | None:
    """How the self-supervised arms' linear probes sit against the raw pixels' (the scale caveat)."""
    arms = summary.get("arms", {})
    pix = arms.get("pixels", {}).get("metrics", {}).get("linear_top1")
    ssl = {rid: a["metrics"]["linear_top1"] for rid, a in arms.items() if "@" not in rid
           and rid not in SSL_EXCLUDED and "linear_top1" in a.get("metrics", {}) and a["metrics"]["linear_top1"].get("mean") is not None}
    if not pix or not ssl:
        return None
    best = max(ssl, key=lambda r: ssl[r]["mean"])
    below = sum(m["mean"] < pix["mean"] for m in ssl.values())
    steps = arms.get(best, {}).get("budget_steps")
    budget = f" after {steps} pretraining steps" if steps else ""
    return (f"At the `{summary.get('profile')}` profile's scale{budget}, {below} of {len(ssl)} self-supervised arms "
            f"probe below the raw pixels' linear top-1 ({_ci(pix)}); the best, `{best}`, reaches {_ci(ssl[best])}: "
            "this profile measures collapse and the terms' effects on it, not the accuracy the papers report.")


def ablation_sentence(summary: dict[str, Any], name: str, title: str) -> str | None:
    """The Holm-significant accuracy differences of one ablation, and how many others stay unresolved."""
    comps = summary.get("comparisons", {}).get(name)
    if comps is None:
        return None
    tested = [(pair, key, c) for pair, by in comps.items() for key, c in by.items() if key in ACCURACY]
    by_pair: dict[str, list[str]] = {}
    for pair, key, c in tested:
        if c.get("significant"):
            by_pair.setdefault(pair, []).append(f"{ACCURACY[key]} {_diff(c)}")
    sig = [f"`{pair}` " + ", ".join(cells) for pair, cells in by_pair.items()]
    rest = len(tested) - sum(len(c) for c in by_pair.values())
    head = f"**{title}** (points, arm minus reference): " + ("; ".join(sig) if sig else "no accuracy difference passes")
    return head + (f"; the other {rest} accuracy comparisons are {NOT_RESOLVED}." if rest else ".")


def claims_sentence(summary: dict[str, Any], name: str, title: str) -> str | None:
    """The published claims an ablation judges (``conf/ablation/<name>.yaml``'s ``claims``), each
    with its verdict, in one sentence."""
    claims = summary.get("claims", {}).get(name)
    if not claims:
        return None
    parts = [f"{v['claim']}: **{v['verdict']}**" + (" (borderline)" if v.get("borderline") else "")
             + f" ({len(v['better']) + len(v['worse'])} of {v['testable']} testable comparisons pass)"
             for v in claims]
    return f"**{title}** (each claim judged by a rule fixed before the run): " + "; ".join(parts) + "."


def study_sentence(summary: dict[str, Any]) -> str | None:
    """The robustness studies' verdicts, counted."""
    parts = []
    for name, st in summary.get("studies", {}).items():
        verdicts = [v["verdict"] for v in st.get("verdicts", {}).values()]
        if verdicts:
            counts = ", ".join(f"{verdicts.count(v)} {v}" for v in dict.fromkeys(verdicts))
            parts.append(f"`{name}`: {counts} of {len(verdicts)} SVMax pairs")
    return ("**Robustness studies** (the SVMax paper's learning-rate and batch-size claims): " + "; ".join(parts) + "."
            if parts else None)


def key_findings(results: Path = Path("results"), shown: Path = Path("results")) -> str:
    """The Key findings block: one sentence per source, in the order a reader asks. ``results``
    is read; ``shown`` is how links name it (relative to the README)."""
    default = _read(results / "default" / "summary.json") or {}
    lines = [s for s in [scale_sentence(default)] if s]
    titles = {"anticollapse": "A. SVMax vs VICReg's variance term", "covariance": "B. VICReg's covariance term",
              "layers": "C. last layer vs every layer"}
    lines += [s for n, t in titles.items() if (s := ablation_sentence(default, n, t))]
    lines += [s for s in [claims_sentence(default, "hosts", "D. As plug-ins to SimSiam")] if s]
    lines += [s for s in [study_sentence(_read(results / "robustness" / "summary.json") or {})] if s]
    figure = results / "default" / "plots" / "headline.png"
    out = [f"- {line}" for line in lines] or ["- No profile has committed results yet."]
    if figure.is_file():
        out += ["", f"![linear and kNN top-1 per arm, 95% CIs]({(shown / 'default' / 'plots' / 'headline.png').as_posix()})"]
    return "\n".join(out) + "\n"


def _hours(h: float | None) -> str:
    """A summed run time: minutes below two hours, hours above."""
    if h is None:
        return "—"
    return f"{h * 60:.0f} min" if h < 2 else f"{h:.1f} h"


def status_table(results: Path = Path("results"), profiles: list[str] | None = None,
                 shown: Path = Path("results")) -> str:
    """One row per profile: its committed runs, their training and evaluation time summed over the
    runs (a full regeneration's wall time is about this over the jobs run at once), the machine that
    made them, when, and its report."""
    rows = ["| profile | ablations | finished runs | run time, summed | made on | when | report |",
            "|:--|:--|--:|--:|:--|:--|:--|"]
    for name in profiles or []:
        summary, prov = _read(results / name / "summary.json"), _read(results / name / "provenance.json")
        ablations = ", ".join(load_manifest(results / name)["ablations"]) or "—"
        if not summary or not prov or not prov.get("runs_done"):
            rows.append(f"| `{name}` | {ablations} | none committed | — | — | — | — |")
            continue
        fields = prov.get("fields", {})
        machine = "; ".join(v for f in ("CPU", "GPU") for v in fields.get(f, {}) if v != "none")
        rows.append(f"| `{name}` | {ablations} | {prov['runs_done']} | {_hours(prov.get('run_hours'))} | {machine} "
                    f"| {(prov.get('last_end') or '')[:10]} "
                    f"| [REPORT]({(shown / name / 'REPORT.md').as_posix()}) |")
    return "\n".join(rows) + "\n"
