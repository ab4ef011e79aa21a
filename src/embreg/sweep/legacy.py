"""What `embreg migrate` checks a finished run by: its config in the current schema, and the code
its fingerprint covers as it was at the revision that trained it.

A run written before the loss terms were a registry keeps flat objective fields (``invariance``,
``variance``, ``covariance``, ``svmax``, ``gamma``, ``var_eps``, ``var_halve``, ``svmax_form``,
``margin``) and a fingerprint of another rule (no ``fingerprint_parts`` in its status.json): the
science config plus one hash over the raw bytes of every training file. ``convert`` rewrites such
a config in the current schema; ``Revisions`` reads a revision's files (``git archive``) and hashes
its code parts as embreg.fingerprint hashes this checkout's; ``legacy_fingerprint`` recomputes the
earlier rule, which tells whether a run trained in a modified checkout ran that revision's code.
"""

from __future__ import annotations

import ast
import copy
import hashlib
import json
import subprocess
import tarfile
import tempfile
from dataclasses import asdict
from io import BytesIO
from pathlib import Path
from typing import Any

from embreg.config import RunConfig
from embreg.fingerprint import PACKAGE_DIR, _files, module_closure_hash, part_hash

LEGACY_COEFFICIENTS = ("invariance", "variance", "covariance", "svmax")
LEGACY_PARAMS = {"gamma": ("variance", "gamma"), "var_eps": ("variance", "eps"), "var_halve": ("variance", "halve"),
                 "svmax_form": ("svmax", "form"), "margin": ("contrastive", "margin")}
TERMLESS_KINDS = ("pixels", "untrained", "supervised")  # kinds that train no term (their coefficients were unused)
OPEN_FIELDS = ("objective.terms", "objective.params")  # mappings of any keys in the schema
# the earlier rule's science part: what it left out of the config
LEGACY_DROPPED = ("paths", "runtime", "ablation", "tag_keys")
LEGACY_DROPPED_PROFILE = ("seeds", "sweep_seeds", "baselines")
PACKAGE = "src/embreg"  # the package's place in the repository


def is_legacy(raw: dict[str, Any]) -> bool:
    obj = raw.get("objective") or {}
    return "terms" not in obj and any(k in obj for k in (*LEGACY_COEFFICIENTS, *LEGACY_PARAMS))


def convert(raw: dict[str, Any]) -> RunConfig:
    """A run's config.yaml in the current schema: flat objective fields become ``objective.terms``
    (a metric kind's contrastive loss at 1, as it was implied) and ``objective.params``, swept
    ``objective.<term>`` tags ``objective.terms.<term>``; fields the schema lacks are refused
    (ValueError naming them); fields it has since gained take their defaults."""
    from omegaconf import OmegaConf

    d = copy.deepcopy(raw)
    if is_legacy(d):
        obj = d["objective"]
        coefs = {k: float(obj.pop(k)) for k in LEGACY_COEFFICIENTS if k in obj}
        params: dict[str, dict[str, Any]] = {}
        for old, (term, key) in LEGACY_PARAMS.items():
            if old in obj:
                params.setdefault(term, {})[key] = obj.pop(old)
        kind = obj.get("kind", "ssl")
        terms = {} if kind in TERMLESS_KINDS else {**({"contrastive": 1.0} if kind == "metric" else {}), **coefs}
        obj["terms"], obj["params"] = terms, {t: p for t, p in params.items() if t in terms}
        d["tag_keys"] = [f"objective.terms.{k.split('.')[1]}" if k.split(".")[-1] in LEGACY_COEFFICIENTS
                         and k.startswith("objective.") else k for k in d.get("tag_keys") or []]
    unknown = _unknown_fields(d, asdict(RunConfig()))
    if unknown:
        raise ValueError(f"fields this schema no longer has: {', '.join(unknown)}")
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RunConfig), d))


def _unknown_fields(d: Any, schema: Any, prefix: str = "") -> list[str]:
    if not isinstance(d, dict) or not isinstance(schema, dict) or prefix.rstrip(".") in OPEN_FIELDS:
        return []
    out = []
    for k, v in d.items():
        if k not in schema and not (prefix == "" and k == "ablation"):
            out.append(prefix + str(k))
        elif k in schema:
            out += _unknown_fields(v, schema[k], f"{prefix}{k}.")
    return out


def science_changes(a: RunConfig, b: RunConfig) -> list[str]:
    """The dotted keys whose science values differ, with each trained term's parameters
    completed by its defaults (a parameter written at its default is the same run)."""
    return _diff(_completed(a.science()), _completed(b.science()))


def _completed(sci: dict[str, Any]) -> dict[str, Any]:
    from embreg import terms

    known = terms.load()
    obj = sci["objective"]
    obj["params"] = {t: {**{k: p.default for k, p in known.get(t).params.items()}, **obj["params"].get(t, {})}
                     if t in known else obj["params"].get(t, {}) for t in obj["terms"]}
    return sci


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [k for key in dict.fromkeys([*a, *b]) for k in _diff(a.get(key), b.get(key), f"{prefix}{key}.")]
    return [] if a == b else [prefix.rstrip(".")]


class Revisions:
    """The package's files at git revisions of the repository at ``root``, extracted once each
    into a temporary directory (removed by ``close``)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp = Path(tempfile.mkdtemp(prefix="embreg-migrate-"))
        self.trees: dict[str, Path | None] = {}

    def package(self, rev: str) -> Path | None:
        """``src/embreg`` at ``rev``; None when the repository does not hold that revision."""
        if rev not in self.trees:
            res = subprocess.run(["git", "archive", "--format=tar", rev, PACKAGE], cwd=self.root, capture_output=True)
            if res.returncode != 0:
                self.trees[rev] = None
            else:
                dest = self.tmp / rev
                with tarfile.open(fileobj=BytesIO(res.stdout)) as tar:
                    tar.extractall(dest, filter="data")
                self.trees[rev] = dest / PACKAGE
        return self.trees[rev]

    def close(self) -> None:
        import shutil

        shutil.rmtree(self.tmp, ignore_errors=True)


def part_hash_at(package: Path, part: str) -> str | None:
    """Code part ``part`` (a core part, or ``term:<name>``) hashed from ``package`` (another
    revision's src/embreg) as embreg.fingerprint hashes this checkout's: a core part from that
    revision's files under the part's paths, a term from the module that defines it here and
    what that module imports from the terms package there. None when a file is absent or does
    not parse there."""
    try:
        if not part.startswith("term:"):
            return part_hash.__wrapped__(part, package)  # uncached: revisions come and go
        return module_closure_hash(package / _term_module(part.removeprefix("term:")), package)
    except (OSError, SyntaxError):
        return None


def _term_module(name: str) -> Path:
    """The module that defines term ``name`` in this checkout, relative to the package."""
    import inspect

    from embreg import terms

    return Path(inspect.getsourcefile(terms.get(name).fn) or "").relative_to(PACKAGE_DIR)


def legacy_fingerprint(raw: dict[str, Any], package: Path) -> str | None:
    """The earlier rule's fingerprint of config ``raw`` (a config.yaml as it was written) with the
    training code of ``package`` (a revision's src/embreg): sha256 over its TRAINING_CODE files'
    names and bytes, and the science part of the config. None when ``package`` has no such list."""
    listed = _literal(package / "fingerprint.py", "TRAINING_CODE")
    if not isinstance(listed, tuple | list):
        return None
    h = hashlib.sha256()
    for f in sorted(f for rel in listed for f in _files(rel, package) if f.is_file()):
        h.update(str(f.relative_to(package)).encode())
        h.update(f.read_bytes())
    science = copy.deepcopy(raw)
    for key in LEGACY_DROPPED:
        science.pop(key, None)
    for key in LEGACY_DROPPED_PROFILE:
        (science.get("profile") or {}).pop(key, None)
    blob = json.dumps({"config": science, "code": h.hexdigest()[:16]}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _literal(path: Path, name: str) -> Any:
    """The literal value assigned to module-level ``name`` in ``path`` (None if none)."""
    if not path.is_file():
        return None
    for node in ast.parse(path.read_text()).body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        if isinstance(target, ast.Name) and target.id == name and node.value is not None:
            try:
                return ast.literal_eval(node.value)
            except ValueError:
                return None
    return None
