"""`embreg migrate`: carry a profile's finished runs over to this checkout's fingerprints, without
retraining, where nothing they computed with has changed.

A finished run (status done, a valid metrics.json) whose fingerprint is not this checkout's is
carried over when both hold:

(a) its config, converted to the current schema (embreg.sweep.legacy.convert), has the science of
    the plan's config for its run id and seed (a term's parameters completed by their defaults);
(b) every code part the plan's fingerprint covers (embreg.fingerprint.code_parts: the core parts
    of its kind, the modules of the terms it trains) is the same here as when it was trained: the
    part hashes its status.json recorded, or, for a run written before parts were recorded, the
    files at its ``git_revision`` (``git archive``), hashed alike. A run trained in a modified
    checkout (``<rev>-dirty``) is carried only if the earlier fingerprint rule, recomputed from
    that revision's files, gives the fingerprint it recorded: it ran that revision's code.

Then its config.yaml is rewritten in the current schema and its status.json records the new
fingerprint and parts (each file written atomically; status.json last, so a cut leaves the run as
it was or carried). A run by hand whose science differs from its profile's own run (the naming
rule of embreg.train.place_hand_run) is moved to the directory that rule names, then judged the
same way. Every finished run is reported: carried over, already current, or not carried and why.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from embreg.attempt import has_result, held
from embreg.config import RunConfig
from embreg.fingerprint import code_parts, fingerprint_of, fingerprint_parts, run_fingerprint
from embreg.io import write_text
from embreg.params import compose_run
from embreg.rundir import State, lock_path, observe, read_status, run_dir, run_id, write_status
from embreg.sweep.cmdline import add_profile_args, profile_plan
from embreg.sweep.legacy import Revisions, convert, legacy_fingerprint, part_hash_at, science_changes
from embreg.sweep.plan import Plan

CARRIED, CURRENT, NOT_CARRIED = "carried over", "already current", "not carried"
MAX_TAGS = 3  # embreg.train.MAX_TAGS: the keys a hand run's id may name


@dataclass
class Outcome:
    run: str  # <run id>/seed<k>, where it was found
    verdict: str
    why: str = ""
    moved_to: str | None = None

    def line(self) -> str:
        return (f"{self.verdict}: {self.run}" + (f" -> {self.moved_to}" if self.moved_to else "")
                + (f" ({self.why})" if self.why else ""))


def migrate(plan: Plan, repo: Path, dry_run: bool = False) -> list[Outcome]:
    """Judge, and unless ``dry_run`` carry over, every finished run under the plan's results."""
    first = next(iter(plan.configs.values()))
    runs = Path(first.paths.results) / "runs"
    planned = {(run_id(cfg), cfg.seed): cfg for cfg in plan.configs.values()}
    revisions = Revisions(repo)
    try:
        return [_one(rd, planned, first, revisions, dry_run)
                for rd in sorted(runs.glob("*/seed*")) if rd.is_dir() and has_result(rd)]
    finally:
        revisions.close()


def _one(rd: Path, planned: dict[tuple[str, int], RunConfig], first: RunConfig, revisions: Revisions,
         dry_run: bool) -> Outcome:
    name = f"{rd.parent.name}/{rd.name}"
    target = planned.get((rd.parent.name, int(rd.name.removeprefix("seed"))))
    if target is not None and observe(target).state == State.DONE:
        return Outcome(name, CURRENT)
    status, raw = read_status(rd), yaml.safe_load((rd / "config.yaml").read_text())
    try:
        cfg = convert(raw)
    except Exception as exc:  # noqa: BLE001 - whatever the schema refuses: the run is not carried
        return Outcome(name, NOT_CARRIED, f"config: {str(exc).splitlines()[0]}")
    if target is None and status.get("fingerprint") == run_fingerprint(cfg):
        return Outcome(name, CURRENT)  # a run by hand, in its own place
    changed = science_changes(cfg, target) if target is not None else []
    moved = None
    if target is None or changed:
        placed = _hand_place(cfg, status, first)
        if placed is None or run_id(placed) == rd.parent.name:
            why = f"config changed: {', '.join(changed[:4])}" if target is not None else "not a run of this plan"
            return Outcome(name, NOT_CARRIED, why)
        cfg = target = placed
        moved = f"{run_id(placed)}/{rd.name}"
        if run_dir(placed).exists():
            return Outcome(name, NOT_CARRIED, f"a hand run; {run_dir(placed)} is taken")
        if not dry_run:
            run_dir(placed).parent.mkdir(parents=True, exist_ok=True)
            os.rename(rd, run_dir(placed))
            rd = run_dir(placed)
    why = code_reason(target, status, raw, revisions)
    if why is None and held(lock_path(target)):
        why = "in use: a job holds its lock"
    if why is None and not dry_run:
        _carry(rd, cfg, status, target)
    return Outcome(name, NOT_CARRIED if why else CARRIED, why or "", moved)


def code_reason(target: RunConfig, status: dict[str, Any], raw: dict[str, Any], revisions: Revisions) -> str | None:
    """Why the code ``target``'s fingerprint covers may differ from the code that trained the
    run, or None: rule (b) of the module's docstring."""
    current = code_parts(target)
    recorded = status.get("fingerprint_parts")
    rev = str(status.get("git_revision") or "unknown")
    if recorded:
        then = {part: recorded.get(part) for part in current}
    else:
        package = revisions.package(rev.removesuffix("-dirty"))
        if package is None:
            return f"revision unknown: {rev} is not in this repository"
        then = {part: part_hash_at(package, part) for part in current}
    changed = [part for part, h in current.items() if then[part] != h]
    if changed:
        return f"code part {', '.join(changed)} changed"
    if not recorded and rev.endswith("-dirty") and legacy_fingerprint(raw, package) != status.get("fingerprint"):
        return f"trained in a modified checkout of {rev.removesuffix('-dirty')[:12]} whose code was not that revision's"
    return None


def _hand_place(cfg: RunConfig, status: dict[str, Any], first: RunConfig) -> RunConfig | None:
    """Where the hand-run naming rule puts a run by hand (its config not the sweep's:
    ``runtime.replace`` false, and no scheduler job recorded): its id names the science keys it
    changes from the profile's own run of its arm; None for a sweep's run or one the rule cannot
    name (more than MAX_TAGS keys, or a list or mapping changed)."""
    if cfg.runtime.replace or cfg.tag_keys or status.get("job_id") or status.get("slurm_job_id"):
        return None
    base = compose_run(cfg.profile.name, [f"objective={cfg.arm}", f"seed={cfg.seed}"])
    changed = science_changes(base, cfg)
    if not changed or len(changed) > MAX_TAGS:
        return None
    if any(isinstance(_select(cfg, key), dict | list) for key in changed):
        return None
    return replace(cfg, tag_keys=changed, paths=replace(first.paths))


def _select(cfg: RunConfig, dotted: str) -> Any:
    node: Any = asdict(cfg)
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _carry(rd: Path, cfg: RunConfig, status: dict[str, Any], target: RunConfig) -> None:
    """config.yaml in the current schema, then status.json with this checkout's fingerprint."""
    parts = fingerprint_parts(target)
    write_text(rd / "config.yaml", yaml.safe_dump(asdict(cfg), sort_keys=False))
    write_status(rd, {**status, "fingerprint": fingerprint_of(parts), "fingerprint_parts": parts,
                      "migrated": {"from_fingerprint": status.get("fingerprint"), "at": time.time()}})


def report(outcomes: list[Outcome], profile: str, dry_run: bool) -> str:
    counts = {v: sum(o.verdict == v for o in outcomes) for v in (CARRIED, CURRENT, NOT_CARRIED)}
    tail = f"{counts[CARRIED]} {'would be carried over' if dry_run else 'carried over'}, " \
           f"{counts[CURRENT]} already current, {counts[NOT_CARRIED]} not carried"
    if counts[NOT_CARRIED]:
        tail += " (`dvc repro` retrains those the plan has)"
    return "\n".join([*(o.line() for o in outcomes), f"{profile}: {tail}" + ("; dry run: nothing written" if dry_run else "")])


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="embreg migrate", description=__doc__.split("\n\n")[0])
    add_profile_args(p)
    p.add_argument("--dry-run", action="store_true", help="judge and report; write nothing")
    p.add_argument("--json", action="store_true", help="print the outcomes as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    found = profile_plan(ap, args)
    if isinstance(found, int):
        return found
    _, plan = found
    try:
        outcomes = migrate(plan, Path.cwd(), args.dry_run)  # run from the repository, like dvc
    except OSError as exc:
        print(f"error: {exc}; the runs carried before it are carried, `embreg migrate` again goes on", file=sys.stderr)
        return 1
    print(json.dumps([asdict(o) for o in outcomes], indent=2) if args.json else report(outcomes, plan.profile, args.dry_run))
    return 0


if __name__ == "__main__":
    sys.exit(main())
