"""The sweep on a real SLURM cluster (tests/slurm/cluster.sh, `make slurm-up`): the same
`dvc repro` of the smoke profile with `launcher: slurm` gives the same tables as the local
launcher."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import repro_copy
from tests.slurm.conftest import require_cluster

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.e2e]


@pytest.fixture(scope="module")
def slurm_repo(tmp_path_factory, fmnist_mirror) -> Path:
    require_cluster()
    return repro_copy(tmp_path_factory.mktemp("slurm"), fmnist_mirror, launcher="slurm")


def test_jobs_ran_through_slurm(slurm_repo):
    logs = list((slurm_repo / "outputs" / "hydra" / "smoke").rglob("*_submitted.pkl"))
    assert logs, "no submitit SLURM job folders"
    ids = {p.name.split("_")[0] for p in logs}
    acct = subprocess.run(["sacct", "-n", "-X", "-o", "JobID,State", "-j", ",".join(ids)],
                          capture_output=True, text=True, check=True).stdout
    states = {line.split()[1] for line in acct.strip().splitlines()}
    assert states == {"COMPLETED"}, acct


WALL_CLOCK = "sec_per_step"  # the only figure that depends on the machine's load, not on the code


def _without_wall_clock(node):
    if isinstance(node, dict):
        return {k: _without_wall_clock(v) for k, v in node.items() if k != WALL_CLOCK}
    if isinstance(node, list):
        return [_without_wall_clock(v) for v in node]
    return node


# table columns that measure the machine (time, memory, process ids), not what the code computed
MACHINE_COLUMNS = ("s/step", "images/s", "peak memory", "pretrain (s)", "seconds", "sec_per_step", "images_per_sec",
                   "peak_memory_mb", "pid")


def _computed(csv: Path) -> pd.DataFrame:
    frame = pd.read_csv(csv, dtype=str, keep_default_na=False)
    return frame.drop(columns=[c for c in frame.columns if any(m in c for m in MACHINE_COLUMNS)])


def test_same_tables_as_the_local_launcher(slurm_repo, smoke_repo):
    summaries = [json.loads((repo / "results" / "smoke" / "summary.json").read_text()) for repo in (slurm_repo, smoke_repo)]
    assert WALL_CLOCK in next(iter(summaries[1]["arms"].values()))["metrics"]
    assert _without_wall_clock(summaries[0]) == _without_wall_clock(summaries[1])
    tables = sorted((smoke_repo / "results" / "smoke" / "tables").glob("*.csv"))
    assert {"main.csv", "layers_collapse.csv", "sensitivity.csv", "runs.csv"} <= {t.name for t in tables}
    for local in tables:
        pd.testing.assert_frame_equal(_computed(slurm_repo / "results" / "smoke" / "tables" / local.name),
                                      _computed(local), obj=local.name)
    manifest = json.loads((slurm_repo / "results" / "smoke" / "runs" / "manifest.json").read_text())
    for rid, seeds in manifest["runs"].items():
        for seed in seeds:
            a = json.loads((slurm_repo / "results/smoke/runs" / rid / f"seed{seed}" / "metrics.json").read_text())
            b = json.loads((smoke_repo / "results/smoke/runs" / rid / f"seed{seed}" / "metrics.json").read_text())
            assert a["linear_top1"] == b["linear_top1"] and a.get("collapse") == b.get("collapse"), rid  # pixels: none
