"""``embreg export --profile P [--out FILE]``: a profile's finished runs in one archive
(embreg.sweep.bundle): their metrics, histories, spectra, configs and status files, never a
checkpoint. How results leave a GPU machine, an offline cluster or a second checkout; ``embreg
import FILE`` merges them elsewhere.

A run is exported only when it is finished in this checkout (status done, the fingerprint this
checkout expects, a valid metrics.json); every other planned run is listed in the manifest's
``not_exported`` with its state (and its checkpoint's size when one is kept here).
Exit status: 0 written (even with no finished run: the manifest says so), 1 an error writing
it, 2 a usage error (an unknown profile, an override that does not compose).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

from embreg.config import RunConfig
from embreg.io import git_revision
from embreg.rundir import State, checkpoint_path, is_finished, run_dir, run_id
from embreg.sweep.bundle import (
    FORMAT,
    RUN_FILES,
    RunFiles,
    checkout_code,
    expected_fingerprint,
    run_key,
    sha256,
    state_here,
    strict_loads,
    write_archive,
)
from embreg.sweep.cmdline import add_profile_args, profile_plan
from embreg.sweep.plan import Plan


def read_run(cfg: RunConfig) -> RunFiles | None:
    """A finished run's files (RUN_FILES that exist), read once; None unless the bytes read
    show it finished with this checkout's fingerprint (a run swapped while being read is left
    out rather than packed half old, half new)."""
    fp = expected_fingerprint(cfg)
    if not is_finished(cfg, fp):
        return None
    rd = run_dir(cfg)
    files = {name: (rd / name).read_bytes() for name in RUN_FILES if (rd / name).is_file()}
    try:
        status, metrics = json.loads(files["status.json"]), strict_loads(files["metrics.json"])
    except (KeyError, ValueError):
        return None
    if status.get("state") != State.DONE or status.get("fingerprint") != fp or not isinstance(metrics, dict):
        return None
    return RunFiles(run_id(cfg), cfg.seed, fp, State.DONE.value, {n: sha256(b) for n, b in files.items()}, files)


def not_finished(cfg: RunConfig) -> dict[str, Any]:
    """A planned run that is not exported: its state here (embreg.rundir's vocabulary: stale,
    interrupted, missing, ...), the first line of its error, and its checkpoint's size."""
    seen = state_here(cfg)
    entry: dict[str, Any] = {"state": seen.state.value}
    if seen.status.get("error") and seen.state != State.STALE:
        entry["error"] = str(seen.status["error"]).splitlines()[0][:200]
    ckpt = checkpoint_path(cfg)
    if ckpt.is_file():
        entry["checkpoint"], entry["checkpoint_bytes"] = str(ckpt), ckpt.stat().st_size
    return entry


def export(plan: Plan, out: Path, overrides: list[str]) -> dict[str, Any]:
    """Write ``plan``'s finished runs to the archive ``out``; returns its manifest plus ``path``
    and ``bytes`` (the archive's size)."""
    runs, skipped = [], {}
    for cfg in plan.configs.values():
        run = read_run(cfg)
        if run is None:
            skipped[run_key(run_id(cfg), cfg.seed)] = not_finished(cfg)
        else:
            runs.append(run)
    manifest = {"format": FORMAT, "profile": plan.profile, "git_revision": git_revision(),
                "code_hash": checkout_code(), "overrides": list(overrides),
                "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "runs": [{"run_id": r.run_id, "seed": r.seed, "fingerprint": r.fingerprint, "state": r.state,
                          "files": r.digests} for r in runs],
                "not_exported": skipped}
    size = write_archive(out, manifest, runs)
    return {**manifest, "path": str(out), "bytes": size}


def report(doc: dict[str, Any]) -> str:
    """One line: how many of the plan's runs went into the archive, and the rest by state."""
    states: dict[str, int] = {}
    for entry in doc["not_exported"].values():
        states[entry["state"]] = states.get(entry["state"], 0) + 1
    total = len(doc["runs"]) + len(doc["not_exported"])
    rest = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
    return (f"exported {len(doc['runs'])} of {total} runs of {doc['profile']} to {doc['path']} "
            f"({doc['bytes'] / 1024:.0f} KiB)" + (f"; not finished here: {rest}" if rest else ""))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="embreg export", description=__doc__.split("\n\n")[0])
    add_profile_args(p, ": its knobs are part of every run's fingerprint")
    p.add_argument("--out", type=Path, help="the archive to write (default: <profile>-runs.tar.gz)")
    p.add_argument("--json", action="store_true", help="print the manifest (with path and bytes) as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    found = profile_plan(ap, args)
    if isinstance(found, int):
        return found
    params, plan = found
    out = args.out or Path(f"{plan.profile}-runs.tar.gz")
    try:
        doc = export(plan, out, params.overrides)
    except OSError as exc:
        print(f"error: cannot write {out}: {exc.strerror or exc}; choose a writable --out", file=sys.stderr)
        return 1
    print(json.dumps(doc) if args.json else report(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
