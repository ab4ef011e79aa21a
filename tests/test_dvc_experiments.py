"""DVC's own commands on a real repository (a temporary git + DVC copy, the smoke profile, a
one-arm ablation): `dvc params diff` shows a changed knob, `dvc exp run -S` works in the
workspace's temporary copy (--temp, --dry, the queue) and trains only what the change needs,
`dvc exp show` filters to a readable table, `dvc exp diff` compares one experiment in rows, and a bad params.yaml never deletes the prepared data."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from embreg.params import profile_knobs
from tests.conftest import copy_repo, git_commit, run_cmd, use_pipeline

pytestmark = pytest.mark.slow

TINY = """name: tiny
title: "T. One arm"
question: Does one arm train?
arms: [inv_only]
baselines: []
sweeps: []
comparisons: []
seeds: ${profile.seeds}
sweep_seeds: ${profile.sweep_seeds}
"""
RUNS = Path("results/smoke/runs/inv_only")


@pytest.fixture(scope="module")
def repo(tmp_path_factory, fmnist_mirror) -> Iterator[Path]:
    """The default pipeline on the smoke profile's values with one ablation of one arm, run and
    committed (results and dvc.lock, as the project commits them)."""
    dst = tmp_path_factory.mktemp("exp")
    copy_repo(dst)
    (dst / "conf" / "ablation" / "tiny.yaml").write_text(TINY)
    p = yaml.safe_load((dst / "params.yaml").read_text())
    use_pipeline(p, "smoke", **{**profile_knobs("smoke"), "ablations": ["tiny"]})
    p["data"]["mirrors"]["fashion_mnist"] = str(fmnist_mirror)
    (dst / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    git_commit(dst, "copy", init=True)
    run_cmd(["dvc", "repro", "analyze"], dst)
    git_commit(dst, "results")
    yield dst
    run_cmd(["dvc", "queue", "stop", "--kill"], dst, check=False)


@contextmanager
def edited(repo: Path, edit) -> Iterator[None]:
    """params.yaml changed by ``edit(mapping)`` for the block, restored after."""
    path = repo / "params.yaml"
    before = path.read_text()
    p = yaml.safe_load(before)
    edit(p)
    path.write_text(yaml.safe_dump(p, sort_keys=False))
    try:
        yield
    finally:
        path.write_text(before)


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(folder)}:{hashlib.sha256(f.read_bytes()).hexdigest()}\n".encode())
    return h.hexdigest()


def test_params_diff_shows_a_changed_knob_and_only_its_stages_rerun(repo):
    def seeds(p):
        p["default"]["seeds"] = [0, 1]

    with edited(repo, seeds):
        diff = run_cmd(["dvc", "params", "diff"], repo).stdout.splitlines()
        assert [line.split(None, 1) for line in diff[1:]] == [["params.yaml", "default.seeds  [0]     [0, 1]"]]
        status = run_cmd(["dvc", "status", "--with-deps", "analyze"], repo).stdout
        assert "sweep:" in status and "modified:           default" in status and "prepare:" not in status

    def robustness(p):
        p["robustness"]["seeds"] = [7]

    with edited(repo, robustness):  # the other pipeline's knob: nothing of this one changes
        assert "up to date" in run_cmd(["dvc", "status", "--with-deps", "analyze"], repo).stdout


def test_a_dry_run_in_the_temporary_workspace(repo):
    out = run_cmd(["dvc", "exp", "run", "--dry", "--allow-missing", "-S", "default.epochs=3", "analyze"], repo).stdout
    assert "Stage 'prepare' didn't change, skipping" in out and "Running stage 'sweep'" in out
    # without --allow-missing DVC lists prepare too (its data is not checked out in a dry run)
    assert run_cmd(["dvc", "exp", "run", "--dry", "-S", "default.seeds=[0,1]", "analyze"], repo).returncode == 0


def test_a_seed_added_in_a_temporary_workspace_trains_that_seed_alone(repo):
    before = (repo / RUNS / "seed0" / "status.json").read_bytes()
    out = run_cmd(["dvc", "exp", "run", "--temp", "-n", "seeds01", "-S", "default.seeds=[0,1]", "analyze"], repo).stdout
    assert "Stage 'prepare' didn't change, skipping" in out and "1 of 2 runs to train (1 up to date)" in out
    # the recipe the docs give: the columns that changed, the means without their bounds (DVC
    # matches --drop from the start of a column's name: hence the leading .*)
    table = run_cmd(["dvc", "exp", "show", "--csv", "--only-changed", "--drop", ".*:ci_"], repo).stdout.splitlines()
    header = table[0].split(",")
    assert "default.seeds" in header and "results/smoke/metrics/linear_top1/inv_only.json:mean" in header
    assert not any(":ci_" in h for h in header) and len(header) <= 12, header
    assert sum(",[0, 1]," in row or row.endswith(",[0, 1]") or '"[0, 1]"' in row for row in table[1:]) == 1, table
    assert len(run_cmd(["dvc", "exp", "show", "--csv"], repo).stdout.splitlines()[0].split(",")) <= 100
    # comparing one experiment with its commit: a row per changed param and metric, as metrics diff
    diff = run_cmd(["dvc", "exp", "diff", "HEAD", "seeds01"], repo).stdout
    assert "default.seeds" in diff and "results/smoke/metrics/linear_top1/inv_only.json" in diff, diff
    assert max(len(line) for line in diff.splitlines()) <= 160, diff
    run_cmd(["dvc", "exp", "apply", "seeds01"], repo)
    try:
        assert (repo / RUNS / "seed0" / "status.json").read_bytes() == before  # kept, not retrained
        assert (repo / RUNS / "seed1" / "metrics.json").is_file()
        assert yaml.safe_load((repo / "params.yaml").read_text())["default"]["seeds"] == [0, 1]
    finally:
        run_cmd(["git", "checkout", "--", "."], repo)
        run_cmd(["git", "clean", "-fdq", "results"], repo)


def test_a_queued_experiment_runs_in_its_own_workspace(repo):
    run_cmd(["dvc", "exp", "run", "--queue", "-n", "queued02", "-S", "default.seeds=[0,2]", "analyze"], repo)
    run_cmd(["dvc", "queue", "start"], repo)
    deadline = time.time() + 300
    while "queued02" in (status := run_cmd(["dvc", "queue", "status"], repo).stdout) and \
            ("Running" in status or "Queued" in status) and time.time() < deadline:
        time.sleep(3)
    run_cmd(["dvc", "queue", "stop"], repo)
    assert "Success" in status, status
    log = run_cmd(["dvc", "queue", "logs", "queued02"], repo).stdout
    assert "1 of 2 runs to train (1 up to date)" in log


@pytest.mark.parametrize("change", ["malformed override", "missing mirror"])
def test_a_bad_params_yaml_keeps_the_prepared_data(repo, tmp_path, change):
    """prepare runs (its mirror changed) and fails, in one line of its own, before touching the
    data: DVC does not delete it first (persist), and nothing else is lost."""
    data, runs = digest(repo / "data" / "fashion_mnist"), digest(repo / RUNS)

    def bad(p):
        p["data"]["mirrors"]["fashion_mnist"] = str(tmp_path)  # an empty folder: prepare runs
        if change == "malformed override":
            p["default"]["overrides"] = ["pretrain.epochs"]

    with edited(repo, bad):
        res = run_cmd(["dvc", "repro", "analyze"], repo, check=False)
    assert res.returncode != 0
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, res.stderr
    assert ("malformed override 'pretrain.epochs'" if change == "malformed override" else "not found in mirror") \
        in errors[0]
    assert digest(repo / "data" / "fashion_mnist") == data and digest(repo / RUNS) == runs
    assert [p.name for p in (repo / "data").iterdir() if p.name.startswith(".fashion")] == []  # no staging left
    assert "up to date" in run_cmd(["dvc", "status", "--with-deps", "analyze"], repo).stdout
