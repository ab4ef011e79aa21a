"""DVC stage `sweep`: train and evaluate every run of the three ablations.

Runs already finished with the current config and code are kept (re-running trains only what
is missing); EMBREG_RETRAIN=1 (`make repro FORCE=1`) retrains everything.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from pathlib import Path

from _common import fail
from embreg.launch import LAUNCHERS, launch, make_plan, states, with_site_defaults, write_manifest
from embreg.params import load_params
from embreg.registry import check_choice


def _stop(signum, frame):  # TERM (e.g. from DVC) stops the jobs too, like Ctrl-C
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    signal.signal(signal.SIGTERM, _stop)
    params = with_site_defaults(load_params())
    check_choice("launcher", params.launcher, LAUNCHERS)
    plan = make_plan(params)
    results = Path(next(iter(plan.configs.values())).paths.results)
    if os.environ.get("EMBREG_RETRAIN") == "1":
        for cfg in plan.configs.values():
            shutil.rmtree(Path(cfg.paths.checkpoints), ignore_errors=True)
        shutil.rmtree(results / "runs", ignore_errors=True)
    code = launch(plan, params, Path("outputs") / "logs" / f"sweep-{plan.profile}.log")
    write_manifest(plan, results)
    bad = {j: s for j, s in states(plan).items() if s != "done"}
    if bad:
        print(f"\n{len(bad)} of {len(plan.jobs)} runs did not finish:", file=sys.stderr)
        for job, state in bad.items():
            rd = results / "runs" / plan.run_ids()[job] / f"seed{job.seed}"
            print(f"  {state:9s} {plan.run_ids()[job]} seed{job.seed}  {rd}/error.txt", file=sys.stderr)
        print("see outputs/logs/ and outputs/hydra/ for the job logs; `dvc repro` again "
              "retrains only these runs", file=sys.stderr)
        return 1
    print(f"all {len(plan.jobs)} runs done")
    return code


if __name__ == "__main__":
    sys.exit(fail(main))
