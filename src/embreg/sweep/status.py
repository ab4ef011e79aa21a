"""`embreg status`: which runs of each profile and ablation are done, running, queued, failed,
diverged, cancelled, stale or missing.

Read from each run directory's status.json and, for runs that went through SLURM, from the
scheduler: a run whose file still says running (or queued, or interrupted) while SLURM reports
its job ended unfinished (cancelled, timed out, out of memory, ...) shows SLURM's state, since
the job that would have updated the file is gone.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from tabulate import tabulate

from embreg.checks import ConfigError
from embreg.params import PipelineParams, check_option, group_options, load_params
from embreg.registry import UnknownNameError
from embreg.rundir import State
from embreg.sweep import scheduler
from embreg.sweep.plan import ablation_jobs, make_plan, observe_all

# the count table's columns, always shown; other states (interrupted, timeout, ...) when present
STATES = (State.DONE, State.RUNNING, State.QUEUED, State.FAILED, State.DIVERGED, State.CANCELLED,
          State.STALE, State.MISSING)
# also shown when present: interrupted (its process gone), incomplete (done but no valid
# metrics.json), unreadable (a status file that does not parse), and SLURM's verdicts
ERROR_WIDTH = 80


def collect(params: PipelineParams, ablations: list[str] | None = None) -> list[dict[str, Any]]:
    """One row per run per ablation of ``params.profile`` (all ablations by default)."""
    plan = make_plan(params, ablations)
    seen, ids = observe_all(plan), plan.run_ids()
    rows = []
    for name, abl in plan.ablations.items():
        for job in ablation_jobs(abl):
            st = seen[job].status
            job_id = st.get("slurm_job_id")
            rows.append({"profile": params.profile, "ablation": name, "run_id": ids[job], "seed": job.seed,
                         "state": seen[job].state.value, "scheduler": None,
                         "slurm_job_id": None if job_id is None else str(job_id),
                         "log": st.get("log"),
                         # a stale run says why: its config, or which parts of the code it ran
                         "error": f"stale: {'; '.join(seen[job].why)}" if seen[job].why else st.get("error"),
                         "sweep": st.get("sweep")})
    _apply_scheduler(rows)
    return rows


def _apply_scheduler(rows: list[dict[str, Any]]) -> None:
    """Fill in SLURM's state of each run's job; a lost job overrides an in-flight file state."""
    ids = [r["slurm_job_id"] for r in rows if r["slurm_job_id"]]
    queued = any(r["state"] == State.QUEUED and r.get("sweep") for r in rows)
    if not (ids or queued) or not scheduler.available():
        return
    known = scheduler.job_states(ids)
    for row in rows:
        sched = known.get(row["slurm_job_id"] or "")
        row["scheduler"] = sched
        lost = scheduler.overruled(row["state"], sched)
        row["state"] = lost.value if lost else row["state"]
    _apply_sweeps(rows, set(ids))


def _apply_sweeps(rows: list[dict[str, Any]], claimed: set[str]) -> None:
    """A queued run names its sweep, not its job, until it starts: the sweep's jobs that no run
    claims say whether one may still start it (their SLURM state), or that none will: then it
    was lost as the sweep stage records it (cancelled, or failed), once the sweep is known to
    SLURM at all (not while it is being submitted)."""
    waiting = [r for r in rows if r["state"] == State.QUEUED and not r["slurm_job_id"] and r.get("sweep")]
    for name in dict.fromkeys(r["sweep"] for r in waiting):
        named = scheduler.jobs_named(name)
        left = {state for job, state in named.items() if job not in claimed}
        active = sorted(left & scheduler.ACTIVE)
        for row in (r for r in waiting if r["sweep"] == name and named):
            row["scheduler"] = ",".join(active or sorted(left)) or None
            if not active:
                row["state"] = (State.CANCELLED if left <= {"CANCELLED"} else State.FAILED).value


def count_table(rows: list[dict[str, Any]]) -> str:
    """Runs per state for each profile x ablation; zero counts blank."""
    groups: dict[tuple[str, str], Counter] = {}
    for r in rows:
        groups.setdefault((r["profile"], r["ablation"]), Counter())[r["state"]] += 1
    extra = sorted({s for c in groups.values() for s in c} - set(STATES))  # interrupted, timeout, ...
    cols = [str(s) for s in (*STATES, *extra)]
    body = [[p, a, *(str(c[s] or "") for s in cols), str(sum(c.values()))] for (p, a), c in groups.items()]
    return tabulate(body, headers=["profile", "ablation", *cols, "total"], tablefmt="simple",
                    colalign=("left", "left", *["right"] * (len(cols) + 1)), disable_numparse=True)


def run_table(rows: list[dict[str, Any]], everything: bool = False) -> str:
    """The runs not done (all with ``everything``), once each with the ablations sharing them."""
    runs: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        if everything or r["state"] != State.DONE:
            key = (r["profile"], r["run_id"], r["seed"])
            runs.setdefault(key, {**r, "ablation": []})["ablation"].append(r["ablation"])
    body = [[r["profile"], ",".join(r["ablation"]), r["run_id"], r["seed"], r["state"], r["scheduler"] or "",
             r["slurm_job_id"] or "", r["log"] or "", _one_line(r["error"])] for r in runs.values()]
    headers = ["profile", "ablation", "run", "seed", "state", "slurm", "job", "log", "error"]
    return tabulate(body, headers=headers, tablefmt="simple", disable_numparse=True)


def _one_line(text: str | None, width: int = ERROR_WIDTH) -> str:
    lines = (text or "").strip().splitlines()
    line = lines[0] if lines else ""
    return line if len(line) <= width else line[: width - 3] + "..."


def _names(values: list[str] | None, group: str) -> list[str] | None:
    """Repeated and comma-separated names, each checked against conf/<group>/."""
    if not values:
        return None
    names = [n.strip() for v in values for n in v.split(",") if n.strip()]
    return list(dict.fromkeys(check_option(group, n) for n in names))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="embreg status", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", action="append", metavar="NAME",
                   help=f"profile(s), repeatable or comma-separated: {', '.join(group_options('profile'))}"
                        " (default: params.yaml's default pipeline's; each with the knobs of the params.yaml section"
                        " that runs it, else its own)")
    p.add_argument("--ablation", action="append", metavar="NAME",
                   help=f"ablation(s), repeatable or comma-separated: {', '.join(group_options('ablation'))}"
                        " (default: all)")
    p.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.add_argument("--all", action="store_true", help="list every run, not only the unfinished ones")
    return p


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    if not Path(args.params).is_file():
        ap.error(f"no params file {args.params}")
    try:
        params = load_params(args.params)
    except ConfigError as exc:  # unknown keys, bad values, malformed overrides: one line each
        for line in str(exc).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return 2
    try:
        profiles = _names(args.profile or [params.profile], "profile")
        ablations = _names(args.ablation, "ablation")
    except UnknownNameError as exc:
        ap.error(str(exc))
    try:
        rows = [row for p in profiles for row in collect(params.for_profile(p), ablations)]
    except (ConfigError, UnknownNameError) as exc:  # an override that does not compose
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for error in dict.fromkeys(r["error"] for r in rows if r["state"] == "unreadable"):
        print(f"warning: {error}; `dvc repro` retrains the run", file=sys.stderr)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(count_table(rows))
    if args.all or any(r["state"] != State.DONE for r in rows):
        print()
        print(run_table(rows, args.all))
    return 0


if __name__ == "__main__":
    sys.exit(main())
