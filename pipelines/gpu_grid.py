"""The fmnist_gpu grid within a wall-clock budget, offline: one command on a GPU machine without
network (``make gpu-grid``, or from the repository root, after ``make gpu-wheels`` here)::

    python3 pipelines/gpu_grid.py --budget-s 540 --out DIR [--resume-from ARCHIVE]

Standard library only (it installs embreg's dependencies first); no make, DVC or network. Steps:
install gpu_bundle/wheels (as gpu_check.py; nothing when the imports already work), import the
finished runs of ``--resume-from`` (an archive an earlier call wrote: ``embreg import
--skip-refused``), prepare Fashion-MNIST from gpu_bundle/fashion-mnist, then the sweep stage's own
script (pipelines/sweep.py: several runs share the GPU, params.yaml's ``local``) until the budget
less ``--reserve-s``. Then it is stopped: each run checkpoints at its next step boundary and
records itself interrupted; its checkpoint stays on this machine, where the next call resumes it.
Last, the finished runs are exported and the logs packed.

Into DIR, flat, three files: ``gpu_grid.json`` (runs done and pending, time used, the time the
rest would take at this call's pace, what to do next), ``<profile>-runs.tar.gz`` (``embreg
export``: the finished runs, no checkpoints) and ``gpu_grid-logs.tar.gz``. Run it again with
``--resume-from`` that archive (or on the same machine, which kept results and checkpoints):
finished runs are not trained again. Exit status: 0 every run of the plan done; 3 the budget
ran out with runs pending (run it again); 1 a step or a run failed (the JSON says which);
2 a usage error; 130 interrupted (what finished is still exported).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _offline import (
    BUNDLE,
    IMPORTS,
    MAX_FILE_BYTES,
    REPO,
    Record,
    description,
    install,
    last_json,
    offline_env,
    outputs,
    pack_logs,
    part,
    start,
)

JSON, LOGS = "gpu_grid.json", "gpu_grid-logs.tar.gz"
MAX_FILES, MAX_TOTAL = 8, 64 << 20  # what a GPU machine returns: files, none nested, and their total
STOP_S = 60  # the sweep's stop: jobs get 15 s to checkpoint (embreg.sweep.stopping), then are killed
MIN_SWEEP_S = 10


def embreg(*args: str) -> list[str]:
    return [sys.executable, "-m", "embreg.cli", *args]


def sweep(rec: Record, a: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    """pipelines/sweep.py until the budget less the reserve; then TERM, which stops its jobs
    (each checkpoints at its next step boundary) and, should it hang, KILL."""
    window = rec.left() - a.reserve_s
    if window < MIN_SWEEP_S:
        return rec.record("sweep", {"status": "skipped", "why": f"{window:.0f} s left before the reserve"})
    t0, stopped_by = time.monotonic(), None
    proc = start([sys.executable, str(REPO / "pipelines" / "sweep.py"), "--profile", a.profile], a.logs / "sweep.log", env)
    try:
        while proc.poll() is None and time.monotonic() - t0 < window:
            time.sleep(0.5)
    except KeyboardInterrupt:
        stopped_by = "interrupted"
    if proc.poll() is None:
        stopped_by = stopped_by or "budget"
        held = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}  # stop in peace
        try:
            os.kill(proc.pid, signal.SIGTERM)  # sweep.py stops every job it started, then exits
            proc.wait(timeout=STOP_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        finally:
            for s, h in held.items():
                signal.signal(s, h)
    rc = proc.returncode
    status = "ok" if rc == 0 else "stopped" if stopped_by else "failed"
    tail = (a.logs / "sweep.log").read_text(errors="replace")[-1500:]
    return rec.record("sweep", {"status": status, "returncode": rc, "stopped_by": stopped_by, "window_s": round(window, 1),
                                "seconds": round(time.monotonic() - t0, 1), "log": "sweep.log", "tail": tail})


def export(rec: Record, a: argparse.Namespace, env: dict[str, str], name: str, dest: Path) -> dict[str, Any] | None:
    """``embreg export`` of the profile to ``dest``; its manifest (runs, not_exported), or None."""
    entry = part(rec, name, {name: embreg("export", "--profile", a.profile, "--out", str(dest), "--json")}, env,
                 max(20.0, rec.left() - 5), a.logs)
    doc = last_json((a.logs / f"{name}.log").read_text(errors="replace"))
    if entry["status"] != "ok" or not isinstance(doc, dict):
        return None
    entry["commands"][name].pop("tail")  # the manifest itself: in the archive
    rec.record(name, {**entry, "runs": len(doc["runs"]), "bytes": doc["bytes"]})
    return doc


def checkpoints(pending: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The unfinished runs' checkpoints: kept on this machine, never carried by the archive."""
    sizes = {k: e["checkpoint_bytes"] for k, e in pending.items() if "checkpoint_bytes" in e}
    largest = max(sizes.values(), default=0)
    why = ("each is more than a returned file may hold" if largest > MAX_FILE_BYTES
           else "checkpoints are not packed") + (": on this machine the next call resumes them; "
                                                 "elsewhere those runs start over")
    return {"count": len(sizes), "mib": round(sum(sizes.values()) / 2**20, 1),
            "largest_mib": round(largest / 2**20, 1), "carried": False, "why": why if sizes else None}


def summarize(rec: Record, after: dict[str, Any] | None, before: dict[str, Any] | None, imported: int) -> None:
    """Runs done and pending, what this call trained, and the time the rest would take at its pace."""
    if after is None:
        rec.doc["runs"] = "unknown: the export failed (see its log)"
        return
    done, pending = {f"{r['run_id']}/seed{r['seed']}" for r in after["runs"]}, after["not_exported"]
    was = {f"{r['run_id']}/seed{r['seed']}" for r in (before or {}).get("runs", [])}
    states: dict[str, int] = {}
    for e in pending.values():
        states[e["state"]] = states.get(e["state"], 0) + 1
    trained = len(done - was)
    sweep_s = float(rec.doc["parts"].get("sweep", {}).get("seconds") or 0.0)
    rec.doc["runs"] = {"total": len(done) + len(pending), "done": len(done), "pending": len(pending),
                       "trained_this_call": trained, "imported": imported, "pending_by_state": states,
                       "pending_runs": pending}
    overhead = rec.elapsed() - sweep_s
    left = round(len(pending) * sweep_s / trained) if trained else None
    rec.doc["time"] = {
        "used_s": round(rec.elapsed(), 1), "sweep_s": round(sweep_s, 1), "overhead_s": round(overhead, 1),
        "extrapolated_left_s": left,
        "budget_for_the_rest_s": round(left + overhead + rec.doc["reserve_s"]) if left else None,
        "how": "pending runs x this call's sweep seconds per run it finished (the GPU shared as this call shared "
               "it; interrupted runs resume from their checkpoints where those are kept): a model, not a measurement"
               if trained else "no run finished in this call's sweep: nothing to extrapolate from"}
    rec.doc["checkpoints"] = checkpoints(pending)


def next_step(rec: Record, a: argparse.Namespace, code: int) -> str:
    archive = f"{a.profile}-runs.tar.gz"
    if code == 0:
        return (f"every run is done: `embreg import {archive}` where the results go, then "
                f"`python pipelines/analyze.py --profile {a.profile}`")
    if code == 3:
        return (f"run again with --resume-from {archive} (carry it along; on this machine the results and "
                "checkpoints are still here)")
    return "a step or a run failed: see parts and pending_runs, and the logs in " + LOGS


def steps(rec: Record, a: argparse.Namespace, env: dict[str, str]) -> tuple[bool, dict[str, Any] | None, int]:
    """Install, import, prepare, sweep; returns (every step ok, the state before the sweep,
    runs imported). Stops at the first step that fails, before the sweep touches anything."""
    if install(rec, a.wheels, a.site, a.imports, env, min(120.0, rec.left() - a.reserve_s), a.logs)["status"] != "ok":
        return False, None, 0
    imported = 0
    if a.resume_from:
        cmd = embreg("import", str(a.resume_from.resolve()), "--profile", a.profile, "--skip-refused", "--json")
        entry = part(rec, "import", {"import": cmd}, env, 120.0, a.logs)
        got = last_json((a.logs / "import.log").read_text(errors="replace"))
        imported = len(got["imported"]) if isinstance(got, dict) else 0
        rec.record("import", {**entry, **(got if isinstance(got, dict) else {})})
        if entry["status"] != "ok":
            return False, None, imported
    prep = [sys.executable, str(REPO / "pipelines" / "gpu_runs.py"), "prepare", "--profile", a.profile, "--mirror", a.mirror]
    if part(rec, "prepare", {"prepare": prep}, env, min(180.0, rec.left() - a.reserve_s), a.logs)["status"] != "ok":
        return False, None, imported
    before = export(rec, a, env, "before", a.work / "before.tar.gz")  # also checks the profile and params.yaml
    if before is None:
        return False, None, imported
    return sweep(rec, a, env)["status"] in ("ok", "stopped"), before, imported


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="gpu_grid.py", description=description(__doc__))
    ap.add_argument("--out", type=Path, default=BUNDLE / "out", help="where its three files go (default: %(default)s)")
    ap.add_argument("--budget-s", type=float, default=540.0, help="the whole call (default: %(default)s)")
    ap.add_argument("--reserve-s", type=float, default=75.0,
                    help="kept at the end to stop the sweep, export and pack (default: %(default)s)")
    ap.add_argument("--resume-from", type=Path, help="the archive an earlier call wrote: its finished runs are kept")
    ap.add_argument("--profile", default="fmnist_gpu")
    ap.add_argument("--work", type=Path, default=BUNDLE / "work" / "grid", help="logs and scratch files")
    ap.add_argument("--wheels", default=str(BUNDLE / "wheels"))
    ap.add_argument("--site", default=str(BUNDLE / "site"))
    ap.add_argument("--mirror", default=str(BUNDLE / "fashion-mnist"))
    ap.add_argument("--imports", default=IMPORTS, help="what the install step must make importable")
    ap.add_argument("--cpu-smoke", action="store_true", help="the same on a CPU with the smoke profile (tests)")
    a = ap.parse_args(argv)
    if a.cpu_smoke and a.profile == "fmnist_gpu":
        a.profile = "smoke"
    if a.resume_from and not a.resume_from.is_file():
        ap.error(f"no archive {a.resume_from}: --resume-from takes the <profile>-runs.tar.gz an earlier call wrote")
    if a.reserve_s >= a.budget_s:
        ap.error(f"--reserve-s {a.reserve_s:g} leaves nothing of --budget-s {a.budget_s:g}")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    a.out, a.work = a.out.resolve(), a.work.resolve()
    a.logs = a.work / "logs"
    for d in (a.out, a.logs):
        d.mkdir(parents=True, exist_ok=True)
    for old in a.logs.iterdir():  # this call's logs only
        old.unlink()
    since = time.time()
    rec = Record(a.out / JSON, a.budget_s, {"mode": "cpu-smoke" if a.cpu_smoke else "gpu", "profile": a.profile,
                                            "reserve_s": a.reserve_s, "resume_from": str(a.resume_from or "")})
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # TERM stops it as Ctrl-C does
    env, interrupted = offline_env(a.site), False
    ok, before, imported = False, None, 0
    try:
        ok, before, imported = steps(rec, a, env)
        interrupted = rec.doc["parts"].get("sweep", {}).get("stopped_by") == "interrupted"
    except KeyboardInterrupt:
        interrupted = True
    after = export(rec, a, env, "export", a.out / f"{a.profile}-runs.tar.gz")
    summarize(rec, after, before, imported)
    if after is None:
        code = 130 if interrupted else 1
    else:
        failed = {"failed", "diverged"} & set(rec.doc["runs"]["pending_by_state"])
        code = 130 if interrupted else 1 if not ok or failed else 3 if after["not_exported"] else 0
    rec.doc["exit_status"], rec.doc["next"] = code, next_step(rec, a, code)
    results = REPO / "results" / a.profile / "runs"
    rec.doc["logs"] = pack_logs(a.out / LOGS, [(a.logs, "logs", "*"), (REPO / "outputs" / "logs", "sweep", "*"),
                                              (REPO / "outputs" / "hydra" / a.profile, "jobs", "*log*"),
                                              (results, "runs", "error.txt")], since)
    found = outputs(a.out)
    rec.doc["outputs"] = found
    rec.doc["outputs_fit"] = len(found) <= MAX_FILES and sum(found.values()) <= MAX_TOTAL and \
        max(found.values(), default=0) <= MAX_FILE_BYTES
    rec.finish()
    print(json.dumps({"exit_status": code, "runs": rec.doc["runs"] if isinstance(rec.doc["runs"], str) else
                      {k: rec.doc["runs"][k] for k in ("total", "done", "pending", "trained_this_call")},
                      "next": rec.doc["next"]}))
    return code


if __name__ == "__main__":
    sys.exit(main())
