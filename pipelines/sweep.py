"""DVC stage `sweep`: train and evaluate every run of the three ablations.

Runs already finished with the current config and code are kept (re-running trains only what
is missing); EMBREG_RETRAIN=1 (`make repro FORCE=1`) retrains everything.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from tabulate import tabulate

from _common import fail, stage_params, stop_on_signals
from embreg.params import LAUNCHERS
from embreg.registry import check_choice
from embreg.sweep.launch import launch
from embreg.sweep.plan import failed_runs, make_plan, validate_plan, write_manifest


def main() -> int:
    stop_on_signals()  # TERM (e.g. from DVC) stops the jobs too, like Ctrl-C
    params = stage_params()
    check_choice("launcher", params.launcher, LAUNCHERS)
    plan = make_plan(params)
    validate_plan(plan)  # every run, before anything is deleted or launched
    results = Path(next(iter(plan.configs.values())).paths.results)
    if os.environ.get("EMBREG_RETRAIN") == "1":
        for cfg in plan.configs.values():
            shutil.rmtree(Path(cfg.paths.checkpoints), ignore_errors=True)
        shutil.rmtree(results / "runs", ignore_errors=True)
    log = Path("outputs") / "logs" / f"sweep-{plan.profile}.log"
    launch(plan, params, log)
    write_manifest(plan, results)
    bad = failed_runs(plan)
    if bad:
        print(f"\n{len(bad)} of {len(plan.jobs)} runs did not finish:\n"
              f"{tabulate(bad, headers='keys', tablefmt='simple')}\n"
              f"sweep log: {log}. `dvc repro` again retrains only these runs; "
              "`dvc repro -s analyze` writes the tables now, with these cells marked.", file=sys.stderr)
        return 1
    print(f"all {len(plan.jobs)} runs done")
    return 0  # the runs' states decide, not how the launcher processes ended


if __name__ == "__main__":
    sys.exit(fail(main))
