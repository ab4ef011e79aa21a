"""What a run's results depend on, declared once, and its fingerprint (torch-free at import).

A run's fingerprint hashes the science part of its config (``RunConfig.science``) and the code
its computation runs: the parts of the training core its kind uses (``CODE_PARTS``,
``KIND_PARTS``: the raw-pixel reference never runs the training loop, the random-init one never
trains) and the module of every loss term it trains with (``embreg.terms``), not the terms it
does not. Code is hashed as its parsed form without docstrings or the terms' descriptions
(``source_hash``), so comments, docstrings and formatting change no fingerprint. A finished run
keeps its fingerprint's parts in status.json, so ``embreg status`` can say why it is stale.

``TRAINING_CODE`` (the parts, the terms package and the plumbing a run goes through) plus
``PIPELINE_CODE`` are exactly the sweep stage's code dependencies in dvc.yaml; every module of
the package is in one of them or in ``NOT_TRAINING_CODE`` (tests/test_layout.py checks both).
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import json
from functools import cache
from pathlib import Path
from typing import Any

PACKAGE_DIR = Path(__file__).resolve().parent

# the training core by part: paths relative to src/embreg/, folders whole
CODE_PARTS: dict[str, tuple[str, ...]] = {
    "run": ("run.py", "config.py"),  # one run from start to end; the schema and its defaults
    "data": ("data",),  # loading, label subsets, augmentation
    "model": ("models.py",),
    "train": ("pretrain.py", "objective.py", "optim.py", "distributed.py", "steplog.py"),
    "eval": ("evaluate.py", "metrics.py"),
}
# the parts each objective kind runs (kinds not listed: every part)
KIND_PARTS: dict[str, tuple[str, ...]] = {
    "pixels": ("run", "data", "eval"),
    "untrained": ("run", "data", "model", "eval"),
}
TERMS_PACKAGE = "terms"  # a run hashes the modules of the terms it trains with (and what they import from here)
# what a run goes through without changing its numbers: locks, atomic writes, signals, status
# files, checks, the entry point (sweep dependencies all the same)
PLUMBING: tuple[str, ...] = ("ablation.py", "attempt.py", "checks.py", "fingerprint.py", "io.py", "overrides.py",
                             "preemption.py", "provenance.py", "registry.py", "rundir.py", "train.py")
TRAINING_CODE: tuple[str, ...] = tuple(sorted({p for ps in CODE_PARTS.values() for p in ps}
                                              | {TERMS_PACKAGE, *PLUMBING}))
# what the sweep stage runs besides: reading params.yaml, planning and launching
PIPELINE_CODE: tuple[str, ...] = ("params.py", "params_checks.py", "sweep")
# never changes a run's results and is no dependency of the sweep stage
NOT_TRAINING_CODE: tuple[str, ...] = ("analysis", "audit.py", "bench", "cli.py")
# keyword arguments that describe, not compute: left out of the hash of a term module
DESCRIPTIONS = {"term": ("doc", "equation"), "Param": ("doc",)}


def _files(rel: str, package_dir: Path = PACKAGE_DIR) -> list[Path]:
    path = package_dir / rel
    return sorted(path.rglob("*.py")) if path.is_dir() else [path]


def training_files(package_dir: Path = PACKAGE_DIR) -> list[Path]:
    """The .py files under TRAINING_CODE, sorted."""
    return sorted(f for rel in TRAINING_CODE for f in _files(rel, package_dir))


class _Strip(ast.NodeTransformer):
    """Drops docstrings, and the descriptive arguments of ``term(...)`` / ``Param(...)``."""

    def generic_visit(self, node: ast.AST) -> ast.AST:
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
        if isinstance(node, ast.Call):
            name = getattr(node.func, "id", getattr(node.func, "attr", ""))
            if name in DESCRIPTIONS:
                node.keywords = [k for k in node.keywords if k.arg not in DESCRIPTIONS[name]]
                if len(node.args) > 1 and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str):
                    node.args = [node.args[0], *node.args[2:]]  # term(name, doc, ...), Param(default, doc, ...)
        return super().generic_visit(node)


@cache
def source_hash(path: Path) -> str:
    """sha256 of a module's parsed form without docstrings or descriptions: comments,
    docstrings, formatting and the terms' doc strings leave it unchanged. 16 hex digits."""
    tree = _Strip().visit(ast.parse(Path(path).read_text()))
    return hashlib.sha256(ast.dump(tree, include_attributes=False).encode()).hexdigest()[:16]


def _hash_files(files: list[Path], root: Path) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.relative_to(root) if f.is_relative_to(root) else f.name}:{source_hash(f)}\n".encode())
    return h.hexdigest()[:16]


@cache
def part_hash(part: str, package_dir: Path = PACKAGE_DIR) -> str:
    """The hash of one part of the training core (``CODE_PARTS``)."""
    return _hash_files(sorted(f for rel in CODE_PARTS[part] for f in _files(rel, package_dir)), package_dir)


def _local_imports(path: Path, package_dir: Path) -> set[Path]:
    """The modules of the terms package that ``path`` imports (its registry excluded)."""
    out = set()
    prefix = f"embreg.{TERMS_PACKAGE}."
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        for name in names:
            if name.startswith(prefix):
                f = package_dir / TERMS_PACKAGE / (name.removeprefix(prefix).replace(".", "/") + ".py")
                if f.is_file():
                    out.add(f)
    return out


@cache
def term_hash(name: str, package_dir: Path = PACKAGE_DIR) -> str:
    """The hash of the module that defines term ``name`` and of the terms-package modules it
    imports, transitively (SVMax: its module and the linear algebra of terms/spectral.py)."""
    from embreg import terms

    return module_closure_hash(Path(inspect.getsourcefile(terms.get(name).fn) or ""), package_dir)


def module_closure_hash(first: Path, package_dir: Path = PACKAGE_DIR) -> str:
    """The hash of ``first`` and of the terms-package modules it imports, transitively."""
    seen: set[Path] = set()
    todo = [first]
    while todo:
        f = todo.pop()
        if f not in seen:
            seen.add(f)
            todo += _local_imports(f, package_dir)
    return _hash_files(sorted(seen), package_dir)


def code_parts(cfg: Any) -> dict[str, str]:
    """The hashes of the code ``cfg``'s run computes with: its kind's parts of the core, then
    ``term:<name>`` for each term it trains with."""
    kind = cfg.objective.kind
    parts = {p: part_hash(p) for p in KIND_PARTS.get(kind, tuple(CODE_PARTS))}
    if kind not in KIND_PARTS:
        from embreg import terms

        known = terms.load()  # an unknown name (a config the checks refuse) has no code to hash
        parts.update({f"term:{t}": term_hash(t) if t in known else "unknown"
                      for t in terms.ordered(cfg.objective.trained())})
    return parts


def config_hash(cfg: Any) -> str:
    """The hash of the science part of the config (``RunConfig.science``)."""
    return hashlib.sha256(json.dumps(cfg.science(), sort_keys=True).encode()).hexdigest()[:16]


def fingerprint_parts(cfg: Any) -> dict[str, str]:
    """Everything the fingerprint hashes: ``config`` and each code part (``code_parts``)."""
    return {"config": config_hash(cfg), **code_parts(cfg)}


def fingerprint_of(parts: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def code_hash(package_dir: Path = PACKAGE_DIR) -> str:
    """One hash of the whole training core (what an archive records of the checkout that made
    it); a run's own fingerprint covers only the parts it runs (``code_parts``)."""
    return _hash_files(training_files(package_dir), package_dir)


def run_fingerprint(cfg: Any) -> str:
    """The run's fingerprint in this checkout: a finished run with another is stale."""
    return fingerprint_of(fingerprint_parts(cfg))


def stale_reasons(recorded: dict[str, str] | None, current: dict[str, str]) -> list[str]:
    """Why a run finished with ``recorded`` parts is stale now: "config", the code parts that
    changed ("code: train", "code: term:svmax"), or that it predates per-part fingerprints."""
    if not recorded:
        return ["fingerprinted by an older embreg (no parts recorded)"]
    out = ["config"] if recorded.get("config") != current.get("config") else []
    changed = [k for k in current if k != "config" and recorded.get(k) != current[k]]
    changed += [k for k in recorded if k != "config" and k not in current]
    return out + ([f"code: {', '.join(changed)}"] if changed else [])
