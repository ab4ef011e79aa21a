"""DVC stage `sweep`: train and evaluate every run of the pipeline's profile (its ablations, references and
sensitivity points).

Runs already finished with the current config and code are kept (re-running trains only what
is missing); EMBREG_RETRAIN=1 (`make repro FORCE=1`) retrains everything.

On SLURM, ``--detach`` (or ``slurm: {detach: true}`` in params.yaml or params.local.yaml) returns
once every job is queued, with exit status 75, and leaves the jobs running; the next `dvc repro`
submits none of them again and, once they have all ended, collects them (embreg.sweep.detach).
Without it the stage waits, and Ctrl-C, TERM or HUP cancel every job it waits on.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from tabulate import tabulate

from _common import fail, stage_params, stop_on_signals
from embreg.data.prepare import check_dataset_key
from embreg.params import DEFAULT_PIPELINE, LAUNCHERS, PipelineParams, compose_run
from embreg.registry import check_choice
from embreg.sweep.detach import DETACHED, check_detach, forget, marker_path, summary
from embreg.sweep.inflight import in_flight
from embreg.sweep.launch import launch
from embreg.sweep.plan import Plan, failed_runs, make_plan, validate_plan, write_manifest

DETACH = "--detach"


def main() -> int:
    stop_on_signals()  # TERM (e.g. from DVC) stops the jobs too, like Ctrl-C, until they are detached
    argv = sys.argv[1:]
    params = stage_params([a for a in argv if a != DETACH], usage=f"[--pipeline NAME | --profile NAME] [{DETACH}]")
    check_choice("launcher", params.launcher, LAUNCHERS)
    check_dataset(params)
    detach = DETACH in argv or (params.launcher == "slurm" and params.slurm.detach)
    plan = make_plan(params)
    validate_plan(plan)  # every run, before anything is deleted or launched
    log = Path("outputs") / "logs" / f"sweep-{plan.profile}.log"
    check_detach(params, detach, in_flight(plan))
    results = Path(next(iter(plan.configs.values())).paths.results)
    if os.environ.get("EMBREG_RETRAIN") == "1":
        _retrain_all(plan, results, log)
    code = launch(plan, params, log, detach=detach)
    write_manifest(plan, results)
    live = in_flight(plan) if detach and not code else {}
    if live:
        follow = "embreg status" + (f" --profile {plan.profile}" if params.pipeline != DEFAULT_PIPELINE else "")
        print(f"detached: {summary(plan, live)}\n"
              f"  the jobs run on without this command; follow them with `{follow}`, collect them with `dvc repro`\n"
              f"  exit status {DETACHED} (not finished yet) keeps DVC from running the analysis on a part of "
              f"the sweep; sweep log: {log}")
        return DETACHED
    bad = failed_runs(plan)
    if bad:
        print(f"\n{len(bad)} of {len(plan.jobs)} runs did not finish:\n"
              f"{tabulate(bad, headers='keys', tablefmt='simple')}\n"
              f"sweep log: {log}. `dvc repro` again retrains only these runs; "
              "`dvc repro -s analyze` writes the tables now, with these cells marked.", file=sys.stderr)
        return 1
    print(f"all {len(plan.jobs)} runs done")
    return 0  # the runs' states decide, not how the launcher processes ended


def check_dataset(params: PipelineParams) -> None:
    """The profile's dataset must be params.yaml's ``dataset``: dvc.yaml's dependencies name its
    prepared data by that key."""
    check_dataset_key(params.dataset, params.profile, compose_run(params.profile, params.overrides).dataset)


def _retrain_all(plan: Plan, results: Path, log: Path) -> None:
    """Delete every run and checkpoint: refused while SLURM jobs still write into them."""
    live = in_flight(plan)
    if live:
        names = ", ".join(sorted(set(live.values())))
        raise ValueError(f"EMBREG_RETRAIN=1: {len(live)} runs are still held by SLURM jobs ({names}); wait for "
                         "them (`embreg status`) or cancel them (scancel --name NAME), then retrain")
    forget(marker_path(log))  # nothing of an earlier detached sweep is left to collect
    for cfg in plan.configs.values():
        shutil.rmtree(Path(cfg.paths.checkpoints), ignore_errors=True)
    shutil.rmtree(results / "runs", ignore_errors=True)


if __name__ == "__main__":
    sys.exit(fail(main))
