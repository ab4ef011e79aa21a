"""The docs' generated blocks that are not a profile's results: the table of terms (read from the
registry, ``embreg.terms.catalog``), the profiles' facts (composed from conf/: data, network,
budget, runs) and what a profile's runs ask of SLURM and what they cost (the launcher defaults,
and the committed runs' own seconds).

``python pipelines/readme.py --docs`` splices them into docs/ between their markers
(``embreg.analysis.readme``); tests/test_docs.py regenerates each and compares, so a new term,
profile or default that the docs do not show fails the tests.

Torch-free at import: the registry's term modules (torch) and conf/ composition load on call.
"""

from __future__ import annotations

import ast
import json
import re
from functools import cache
from pathlib import Path
from typing import Any

# tag -> the docs page holding that block (markers <!-- tag:begin --> / <!-- tag:end -->)
PAGES = {"terms": "docs/terms.md", "profiles": "docs/profiles.md", "slurm-resources": "docs/slurm.md",
         "ablations": "docs/ablations.md", "modules": "docs/architecture.md",
         "findings": "README.md", "status": "README.md"}  # the README's two: embreg.analysis.headline


# the profiles' order in the tables: by scale, the CPU profiles first
ORDER = ("smoke", "default", "robustness", "fmnist_gpu", "fmnist_gpu_hosts", "cifar10", "cifar100", "stl10",
         "imagenet100", "imagenet")


def _cell(text: Any) -> str:
    """A table cell's text: no bare pipe (GitHub splits cells on a pipe even in a code span)."""
    out = str(text).replace("||", "‖").replace(" | ", " or ")
    if "|" in out:
        raise ValueError(f"a '|' in a docs table cell: {out!r}; write it another way in the source")
    return out


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(_cell(c) for c in row) + " |" for row in rows)]


def _n(count: int | None, thing: str) -> str:
    return f"{count} {thing}{'' if count == 1 else 's'}"


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _allowed(p: Any) -> str:
    """A parameter's accepted values in words (embreg.terms.Param)."""
    if p.choices is not None:
        return ", ".join(f"`{c}`" for c in p.choices)
    if isinstance(p.default, bool):
        return "true, false"
    rng = ([f"{'>' if p.lo_open else '>='} {p.lo:g}"] if p.lo is not None else []) + \
        ([f"<= {p.hi:g}"] if p.hi is not None else [])
    kind = "integer" if isinstance(p.default, int) else "number"
    return f"{kind} {' and '.join(rng)}".strip()


def terms_block() -> str:
    """Every registered term (in the order they are summed) and every term parameter."""
    from embreg import terms

    cat = terms.catalog()
    rows = [[f"`{t['name']}`", t["doc"], f"`{t['equation']}`" if t["equation"] else "",
             ", ".join(f"`{k}={json.dumps(v)}`" for k, v in t["params"].items()) or "none",
             _yes(t["regularizer"]), _yes(t["monitor"]), ", ".join(t["kinds"]), _yes(t["head"])] for t in cat]
    params = [[f"`{t['name']}.{k}`", f"`{json.dumps(p.default)}`", _allowed(p), p.doc]
              for t in cat for k, p in terms.get(t["name"]).params.items()]
    out = [f"{len(cat)} terms, from `embreg.terms.catalog()` (in the order an arm's loss sums them).", "",
           *_table(["term", "what it does", "definition", "parameters", "regularizer", "logged by other arms",
                    "kinds", "extra head"], rows),
           "", "Their parameters (`objective.params.<term>.<parameter>`; checked before any run starts):", "",
           *_table(["parameter", "default", "allowed", "meaning"], params)]
    return "\n".join(out) + "\n"


@cache
def _profiles() -> list[tuple[str, Any, int]]:
    """(name, composed RunConfig, number of runs in its sweep plan) for every conf/profile file,
    smallest scale first (``ORDER``, then any other by name)."""
    from embreg.params import PipelineParams, compose_run, group_options
    from embreg.sweep.plan import ablation_jobs, load_ablations

    out = []
    for name in sorted(group_options("profile"), key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n)):
        abls = load_ablations(PipelineParams(profile=name))
        runs = len(dict.fromkeys(job for abl in abls.values() for job in ablation_jobs(abl)))
        out.append((name, compose_run(name, []), runs))
    return out


def _pretraining(cfg: Any) -> str:
    pre = cfg.pretrain
    per_epoch = f"{pre.steps_per_epoch} steps" if pre.steps_per_epoch else "one pass"
    return f"{pre.epochs} epochs x {per_epoch}"


def profiles_block() -> str:
    """One row per profile: data, network, budget, seeds and how many runs its sweep trains."""
    rows = []
    for name, cfg, runs in _profiles():
        net = f"{cfg.backbone.name}, {cfg.backbone.stem} stem, projector {'-'.join(map(str, cfg.backbone.projector))}"
        rows.append([f"`{name}`", cfg.dataset.name, cfg.profile.device, net, cfg.optim.batch_size, _pretraining(cfg),
                     cfg.pretrain.precision, len(cfg.profile.seeds), ", ".join(cfg.profile.ablations),
                     _yes(cfg.eval.semi_supervised), runs])
    out = ["From conf/profile/ (composed as the sweep composes them); `runs`: arms and references x seeds plus the "
           "sensitivity points, a run shared by two ablations counted once.", "",
           *_table(["profile", "dataset", "device", "network", "batch", "pretraining", "precision", "seeds",
                    "ablations", "1% / 10% fine-tuning", "runs"], rows)]
    return "\n".join(out) + "\n"


def measured(runs_dir: Path) -> dict[str, Any] | None:
    """The committed runs' own cost: finished runs, the sum and the largest of each run's
    pretraining + evaluation seconds (metrics.json), and the commits they were trained at."""
    secs, revs = [], set()
    for metrics in sorted(runs_dir.glob("*/seed*/metrics.json")):
        status = json.loads((metrics.parent / "status.json").read_text()) if (metrics.parent / "status.json").is_file() else {}
        if status.get("state") != "done":
            continue
        m = json.loads(metrics.read_text())
        secs.append(float(m.get("pretrain_seconds") or 0) + float(m.get("eval_seconds") or 0))
        revs.add(str(m.get("git_revision") or "unknown")[:7])
    return {"runs": len(secs), "hours": sum(secs) / 3600, "longest_min": max(secs) / 60, "commits": sorted(revs)} \
        if secs else None


def slurm_block(results: Path) -> str:
    """Per profile: what each run asks SLURM for with the default settings, and the committed runs' cost."""
    from embreg.params import SlurmParams
    from embreg.sweep.resources import slurm_resources

    rows = []
    for name, cfg, runs in _profiles():
        s = slurm_resources(SlurmParams(), cfg.profile.device)
        ask = f"{_n(s.gpus_per_node, 'GPU')}, {_n(s.cpus_per_task, 'CPU')}, {s.mem_gb} GB"
        cost = measured(results / name / "runs")
        if cost is None:
            took, longest = "not measured: no committed results", "—"
        else:
            took = (f"{cost['hours']:.2f} h over {cost['runs']} runs ({cfg.profile.device}; "
                    f"commit {', '.join(cost['commits'])})")
            longest = f"{cost['longest_min']:.1f} min"
        rows.append([f"`{name}`", cfg.profile.device, runs, ask, took, longest])
    out = ["Each run is one job (an array task) asking for the resources below, with `slurm:` left at its defaults "
           "(`SlurmParams`); `run-hours`: the sum of each committed run's pretraining and evaluation seconds "
           "(`metrics.json`), on the device and at the commit named; on a GPU profile with one GPU per run, "
           "its GPU-hours.", "",
           *_table(["profile", "device", "runs", "each run asks for", "run-hours of the committed runs",
                    "longest run"], rows)]
    return "\n".join(out) + "\n"


def _runs(abl: Any) -> str:
    """An ablation's runs: arms and references x seeds, sensitivity points x sweep seeds."""
    from embreg.sweep.plan import ablation_jobs

    return str(len(ablation_jobs(abl)))


def ablations_block() -> str:
    """One row per ablation a profile runs, composed under the first profile that runs it (the
    default profile first, then the others by name)."""
    from embreg.params import PipelineParams
    from embreg.sweep.plan import load_ablations

    where: dict[str, str] = {}
    for name, cfg, _ in sorted(_profiles(), key=lambda p: p[0] != "default"):
        for abl in cfg.profile.ablations:
            where.setdefault(abl, name)
    rows = []
    for abl_name, profile in where.items():
        abl = load_ablations(PipelineParams(profile=profile), [abl_name])[abl_name]
        points = "; ".join(f"`{sw['arm']}`: `{sw['key']}` = {', '.join(map(str, sw['values']))}" for sw in abl.sweeps)
        compared = ", ".join(f"`{a}` vs `{r}`" for a, r in abl.comparisons) or "per point (the study's own tests)"
        rows.append([f"`{abl_name}`", abl.title, f"`{profile}`",
                     ", ".join(f"`{a}`" for a in abl.arms) or "(sweep points only)",
                     ", ".join(f"`{b}`" for b in abl.baselines) or "none", points or "none", compared, _runs(abl)])
    out = ["From conf/ablation/, as the profile named composes it (the seeds are that profile's); `runs` counts this "
           "ablation alone (a run it shares with another ablation is trained once).", "",
           *_table(["ablation", "title", "profile", "arms", "references", "sensitivity points", "tested",
                    "runs"], rows)]
    return "\n".join(out) + "\n"


def _summary(path: Path) -> str:
    """A module's docstring, its first sentence: up to the first full stop outside parentheses
    (so "et al." and "Eq. 1" inside a citation do not end it), or its first paragraph."""
    doc = " ".join((ast.get_docstring(ast.parse(path.read_text())) or "").split("\n\n")[0].split())
    doc = re.sub(r":(mod|class|func):", "", doc).replace("``", "`")
    depth = 0
    for i, ch in enumerate(doc):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch == "." and depth == 0 and doc[i + 1: i + 2] in ("", " ") and not doc[:i].endswith(("e.g", "i.e")):
            return doc[: i + 1]
    return doc.rstrip(":") + ("." if doc.endswith(":") else "")


def _part(rel: str) -> str:
    """Which part of the package a path (relative to src/embreg) is, as embreg.fingerprint declares it."""
    from embreg import fingerprint as fp

    top = rel.split("/")[0]
    for part, paths in fp.CODE_PARTS.items():
        if top in paths:
            return f"training core: {part}"
    if top == fp.TERMS_PACKAGE:
        return "training core: terms"
    if top in fp.PLUMBING:
        return "training core: plumbing"
    return "sweep stage" if top in fp.PIPELINE_CODE else "tools and analysis"


def modules_block(package: Path) -> str:
    """Every module of the package with the first sentence of its docstring, grouped as the
    fingerprint declares the package (what a run's fingerprint hashes, what the sweep runs, the rest)."""
    rows = sorted(([_part(rel), f"`{rel}`", _summary(f)] for f in package.rglob("*.py")
                   if (rel := f.relative_to(package).as_posix()) and not rel.endswith("__main__.py")),
                  key=lambda r: (not r[0].startswith("training core"), r[0] == "tools and analysis", r[0], r[1]))
    out = ["Every module of `src/embreg/` with the first sentence of its docstring, grouped as "
           "`src/embreg/fingerprint.py` declares them.", "", *_table(["part", "module", "what it is"], rows)]
    return "\n".join(out) + "\n"


def blocks(repo: Path) -> dict[str, str]:
    """tag -> generated block, for every block in ``PAGES``."""
    from embreg.analysis.headline import key_findings, status_table

    results = repo / "results"
    return {"terms": terms_block(), "profiles": profiles_block(), "slurm-resources": slurm_block(results),
            "ablations": ablations_block(), "modules": modules_block(repo / "src" / "embreg"),
            "findings": key_findings(results, Path("results")),
            "status": status_table(results, [p for p in ORDER if p != "smoke"], Path("results"))}
