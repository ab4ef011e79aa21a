"""``embreg import FILE``: merge an ``embreg export`` archive into ``results/<profile>/runs``.

Everything is checked before anything is written: the archive (its manifest, every file's
sha256, no member outside the runs it lists), then each run against this checkout: a run of
the profile's plan here (same arm, sweep point and seed), finished (status done, a valid
metrics.json), with the fingerprint this checkout expects (same config and training code), and
nothing here it would replace: a finished run with another fingerprint is never overwritten,
and a run being trained here now is not touched. A run already finished here with the same
fingerprint is left as it is and counted. Any refused run stops the whole import (one line per
problem, nothing written) unless ``--skip-refused``, which imports the runs that pass and lists
the others as warnings.

Each run is written the way a training attempt publishes one (embreg.attempt): under the run's
lock, into a hidden sibling, then swapped in; the plan's manifest.json is rewritten after.
Then ``python pipelines/analyze.py --profile P`` writes the tables (``dvc commit`` records them
where DVC tracks the profile). Exit status: 0 imported (or nothing to do), 1 a problem (nothing
written unless ``--skip-refused``), 2 a usage error.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embreg.attempt import (
    RunLock,
    RunLockedError,
    attempt_dir,
    has_result,
    held,
    publish,
    read_status_file,
    recover,
)
from embreg.checks import ConfigError
from embreg.config import RunConfig
from embreg.io import atomic_write, git_revision
from embreg.params import PipelineParams, check_option, load_params
from embreg.registry import UnknownNameError
from embreg.rundir import State, is_finished, lock_path, run_dir, run_id
from embreg.sweep.bundle import (
    Archive,
    ArchiveError,
    RunFiles,
    checkout_code,
    expected_fingerprint,
    read_archive,
    strict_loads,
)
from embreg.sweep.plan import Plan, make_plan, write_manifest


class Conflict(RuntimeError):
    """A run here that an import must not replace."""


@dataclass
class Verdict:
    """What an import would do: runs to write, runs already here, one line per refused run."""

    accept: list[tuple[RunFiles, RunConfig]] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def run_problem(run: RunFiles, cfg: RunConfig | None, archive: Archive) -> str | None:
    """Why ``run`` cannot be imported as the plan's ``cfg`` (None: it can)."""
    where = f"revision {archive.manifest.get('git_revision', 'unknown')}"
    if cfg is None:
        return (f"run {run.key}: profile {archive.profile} here plans no such run (other arms, sweep points or "
                f"seeds): import it into the checkout that exported it ({where}, same params.yaml)")
    try:
        status, metrics = strict_loads(run.files["status.json"]), strict_loads(run.files["metrics.json"])
    except ValueError:
        return f"run {run.key}: its status.json or metrics.json is not valid JSON: not a finished run"
    if not isinstance(status, dict) or status.get("state") != State.DONE or run.state != State.DONE \
            or not isinstance(metrics, dict):
        state = status.get("state") if isinstance(status, dict) else "unknown"
        return f"run {run.key}: not finished (state {state}): only finished runs are imported; export it once it is done"
    if (status.get("run_id"), status.get("seed")) != (run.run_id, run.seed):
        return f"run {run.key}: its status.json is run {status.get('run_id')} seed{status.get('seed')}: refused"
    fp = expected_fingerprint(cfg)
    if run.fingerprint != fp or status.get("fingerprint") != fp:
        return (f"run {run.key}: fingerprint {status.get('fingerprint')}, this checkout expects {fp} (other config "
                f"or training code): import it where it was trained ({where}) or retrain it here")
    return None


def local_state(run: RunFiles, cfg: RunConfig, locked: bool = False) -> str:
    """``new`` (nothing here to keep), ``same`` / ``other numbers`` (finished here with this
    fingerprint: kept); raises Conflict for a run here that must not be replaced (``locked``:
    the caller holds the run's lock, so nobody else trains it)."""
    rd, fp = run_dir(cfg), expected_fingerprint(cfg)
    if is_finished(cfg, fp):
        same = all((rd / n).is_file() and (rd / n).read_bytes() == b for n, b in run.files.items())
        return "same" if same else "other numbers"
    if has_result(rd):
        other = read_status_file(rd / "status.json").get("fingerprint")
        raise Conflict(f"run {run.key}: {rd} holds a finished run of other config or code (fingerprint {other}); "
                       "an import never replaces one: move that directory away first")
    if not locked and held(lock_path(cfg)):
        raise Conflict(f"run {run.key}: being trained here now (lock {lock_path(cfg)}): wait for it or stop it first")
    return "new"


def judge(archive: Archive, plan: Plan, params: PipelineParams) -> Verdict:
    """Every run of ``archive`` checked against ``plan`` and the run directories; writes nothing."""
    verdict = Verdict()
    if archive.manifest.get("code_hash") != checkout_code():
        verdict.notes.append(f"the archive's training code (code hash {archive.manifest.get('code_hash')}, revision "
                             f"{archive.manifest.get('git_revision')}) differs from this checkout's "
                             f"({checkout_code()}, revision {git_revision()}): a run matches only where the "
                             "parts of the code it ran did not change")
    if list(archive.manifest.get("overrides") or []) != list(params.overrides):
        verdict.notes.append(f"the archive was made with overrides {archive.manifest.get('overrides')}, "
                             f"this params file has {params.overrides}")
    configs = {(run_id(c), c.seed): c for c in plan.configs.values()}
    for run in archive.runs:
        cfg = configs.get((run.run_id, run.seed))
        problem = run_problem(run, cfg, archive)
        if problem is None:
            assert cfg is not None
            try:
                state = local_state(run, cfg)
            except Conflict as exc:
                problem = str(exc)
            else:
                if state == "new":
                    verdict.accept.append((run, cfg))
                else:
                    verdict.present.append(run.key)
                if state == "other numbers":
                    verdict.notes.append(f"run {run.key}: kept the result already here (same fingerprint, other "
                                         "numbers: it was trained twice)")
        if problem:
            verdict.refused.append(problem)
    return verdict


def write_run(run: RunFiles, cfg: RunConfig) -> bool:
    """Write one run as an attempt publishes one: under its lock, into the hidden sibling, then
    swapped in. Returns False when it turned out finished here meanwhile (kept); raises
    Conflict or RunLockedError for a run that must not be touched."""
    rd = run_dir(cfg)
    with RunLock(lock_path(cfg), f"run {run.key}"):
        recover(rd)
        if local_state(run, cfg, locked=True) != "new":
            return False
        stage = attempt_dir(rd)
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir(parents=True)
        for name, data in run.files.items():
            atomic_write(stage / name, lambda f, d=data: f.write(d))
        publish(stage, rd)
    return True


def merge(verdict: Verdict, plan: Plan) -> tuple[list[str], list[str]]:
    """Write the accepted runs; returns (imported, problems). The manifest is rewritten even when
    the import is interrupted, so the analysis sees every run that got in."""
    imported, problems = [], []
    try:
        for run, cfg in verdict.accept:
            try:
                if write_run(run, cfg):
                    imported.append(run.key)
                else:
                    verdict.present.append(run.key)
            except (Conflict, RunLockedError, OSError) as exc:
                problems.append(str(exc))
    finally:
        if imported:
            write_manifest(plan, Path(next(iter(plan.configs.values())).paths.results))
    return imported, problems


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="embreg import", description=__doc__.split("\n\n")[0])
    p.add_argument("archive", type=Path, help="an archive written by `embreg export`")
    p.add_argument("--profile", metavar="NAME", help="refuse an archive of another profile")
    p.add_argument("--params", default="params.yaml", help="params file (default: %(default)s): its overrides "
                   "are part of every run's fingerprint")
    p.add_argument("--skip-refused", action="store_true", help="import the runs that pass; list the others as warnings")
    p.add_argument("--dry-run", action="store_true", help="check and report; write nothing")
    p.add_argument("--json", action="store_true", help="print the outcome as JSON")
    return p


def _load(args: argparse.Namespace) -> tuple[Archive, Plan, PipelineParams]:
    """The archive and this checkout's plan for its profile; ArchiveError for either's problem."""
    archive = read_archive(args.archive)
    try:
        profile = check_option("profile", archive.profile)
    except UnknownNameError as exc:
        raise ArchiveError(f"the archive's profile is unknown here: {exc}") from None
    if args.profile and args.profile != profile:
        raise ArchiveError(f"{args.archive} holds profile {profile}, not {args.profile}")
    params = load_params(args.params)
    params = params.for_profile(profile)
    return archive, make_plan(params), params


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    for path, what in ((args.archive, "archive"), (Path(args.params), "params file")):
        if not path.is_file():
            ap.error(f"no {what} {path}")
    try:
        archive, plan, params = _load(args)
    except ArchiveError as exc:
        for line in str(exc).splitlines():
            print(f"error: {line}", file=sys.stderr)
        print("error: nothing was imported", file=sys.stderr)
        return 1
    except (ConfigError, UnknownNameError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    verdict = judge(archive, plan, params)
    for note in verdict.notes:
        print(f"note: {note}", file=sys.stderr)
    for line in verdict.refused:
        print(f"{'warning' if args.skip_refused else 'error'}: {line}", file=sys.stderr)
    if verdict.refused and not args.skip_refused:
        print(f"error: nothing was imported ({len(verdict.refused)} runs refused); fix them, or --skip-refused "
              f"imports the {len(verdict.accept)} that pass", file=sys.stderr)
        return 1
    imported, problems = ([], []) if args.dry_run else merge(verdict, plan)
    for line in problems:
        print(f"error: {line}", file=sys.stderr)
    out = {"profile": plan.profile, "archive": str(args.archive), "dry_run": args.dry_run,
           "imported": [r.key for r, _ in verdict.accept] if args.dry_run else imported,
           "present": verdict.present, "refused": verdict.refused + problems}
    print(json.dumps(out) if args.json else _report(out))
    return 1 if problems else 0


def _report(out: dict[str, Any]) -> str:
    verb = "would import" if out["dry_run"] else "imported"
    line = (f"{verb} {len(out['imported'])} runs of {out['profile']} from {out['archive']}; "
            f"{len(out['present'])} already here, {len(out['refused'])} refused")
    if out["imported"] and not out["dry_run"]:
        line += f"; next: python pipelines/analyze.py --profile {out['profile']}"
    return line


if __name__ == "__main__":
    sys.exit(main())
