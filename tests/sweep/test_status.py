"""`embreg status` on run directories written by hand: every state a status file can hold,
a stale fingerprint, missing runs, and runs shared by two ablations."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from embreg.fingerprint import fingerprint_parts, run_fingerprint
from embreg.io import write_json
from embreg.params import group_options, load_params
from embreg.rundir import run_dir, run_id
from embreg.sweep.plan import Job, ablation_jobs, make_plan
from embreg.sweep.status import collect, main
from tests.conftest import run_cmd

ABLATIONS = ["layers", "covariance"]  # share vicreg, random_init and supervised
ERROR = "RuntimeError: boom " + "x" * 100 + "\nTraceback line two"
# run -> status file contents beyond run_id/seed (None: no file)
WRITTEN = {
    Job("vicreg", 0): {"state": "done"},
    Job("svmax", 0): {"state": "done", "fingerprint": "0123456789abcdef"},
    Job("vicreg_all", 0): {"state": "failed", "error": ERROR},
    Job("svmax_all", 0): {"state": "running", "host": "node1", "pid": 123},
    Job("random_init", 0): {"state": "interrupted", "error": "SystemExit"},
    Job("vicreg", 0, "objective.terms.covariance", 0.1, ("eval.semi_supervised=false",)):
        {"state": "queued", "slurm_job_id": "999999999_1", "log": "/logs/999999999_1_0_log.out"},
}


def _table(text: str) -> list[dict[str, str]]:
    """A tabulate 'simple' table back into rows, column spans taken from its dashes line."""
    lines = text.strip("\n").splitlines()
    spans, pos = [], 0
    for dashes in lines[1].split("  "):
        if dashes:
            start = lines[1].index(dashes, pos)
            spans.append((start, start + len(dashes)))
            pos = start + len(dashes)
    cut = [(s, spans[i + 1][0] if i + 1 < len(spans) else None) for i, (s, _) in enumerate(spans)]
    headers = [lines[0][a:b].strip() for a, b in cut]
    return [{h: line[a:b].strip() for h, (a, b) in zip(headers, cut, strict=True)} for line in lines[2:]]


def _tables(out: str) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    counts, _, runs = out.partition("\n\n")
    return _table(counts), _table(runs) if runs.strip() else []


# the two ablations as this test knows them (the project's files grow arms: these do not)
FROZEN = {
    "covariance": {"name": "covariance", "title": "B", "question": "q", "arms": ["vicreg", "vicreg_nocov", "inv_only"],
                   "baselines": "${profile.baselines}", "comparisons": [["vicreg_nocov", "vicreg"]],
                   "sweeps": [{"arm": "vicreg", "key": "objective.terms.covariance", "values": [0.1, 10.0]}],
                   "seeds": "${profile.seeds}", "sweep_seeds": "${profile.sweep_seeds}"},
    "layers": {"name": "layers", "title": "C", "question": "q", "arms": ["vicreg", "vicreg_all", "svmax", "svmax_all"],
               "baselines": "${profile.baselines}", "comparisons": [["vicreg_all", "vicreg"]],
               "sweeps": [{"arm": "svmax_all", "key": "objective.layer_weight", "values": [0.2]},
                          {"arm": "vicreg_all", "key": "objective.layer_weight", "values": [0.2]}],
               "seeds": "${profile.seeds}", "sweep_seeds": "${profile.sweep_seeds}"},
}


@pytest.fixture(scope="module", autouse=True)
def frozen_conf(tmp_path_factory):
    """conf/ with FROZEN's ablation files, for this module and the commands it starts."""
    import os
    import shutil

    conf = tmp_path_factory.mktemp("conf") / "conf"
    shutil.copytree(Path(__file__).resolve().parents[2] / "conf", conf)
    for name, doc in FROZEN.items():
        (conf / "ablation" / f"{name}.yaml").write_text(yaml.safe_dump(doc))
    before = os.environ.get("EMBREG_CONF")
    os.environ["EMBREG_CONF"] = str(conf)
    yield conf
    if before is None:
        os.environ.pop("EMBREG_CONF")
    else:
        os.environ["EMBREG_CONF"] = before


@pytest.fixture(scope="module")
def repo(tmp_path_factory, frozen_conf) -> Path:
    """A params.yaml whose pipelines (smoke, and the default profile beside it) keep their results
    in a temporary directory, and status files for some of the smoke runs."""
    root = tmp_path_factory.mktemp("status")
    params = {"default": {"profile": "smoke", "overrides": [f"paths.results={root}/results"]},
              "other": {"profile": "default", "overrides": [f"paths.results={root}/results"]},
              "data": {"dir": str(root / "data")}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    plan = make_plan(load_params(root / "params.yaml"), ABLATIONS)
    for job, extra in WRITTEN.items():
        cfg = plan.configs[job]
        write_json(run_dir(cfg) / "status.json", {"run_id": run_id(cfg), "arm": cfg.arm, "seed": cfg.seed,
                                                  "fingerprint": run_fingerprint(cfg),
                                                  "fingerprint_parts": fingerprint_parts(cfg), **extra})
        if extra["state"] == "done":  # finished means a valid metrics.json too
            write_json(run_dir(cfg) / "metrics.json", {"linear_top1": 50.0})
    return root


@pytest.fixture(scope="module")
def rows(repo) -> list[dict]:
    return collect(load_params(repo / "params.yaml"), ABLATIONS)


def _by(rows: list[dict], ablation: str) -> dict[tuple[str, int], dict]:
    return {(r["run_id"], r["seed"]): r for r in rows if r["ablation"] == ablation}


def test_ablation_jobs_partition_the_plan(repo):
    plan = make_plan(load_params(repo / "params.yaml"), ABLATIONS)
    per = {name: ablation_jobs(abl) for name, abl in plan.ablations.items()}
    assert len(per["layers"]) == 9 and len(per["covariance"]) == 8  # arms, 3 references, sweep points
    assert set(per["layers"]) | set(per["covariance"]) == set(plan.jobs)
    assert set(per["layers"]) & set(per["covariance"]) == {Job("vicreg", 0), Job("pixels", 0),
                                                          Job("random_init", 0), Job("supervised", 0)}


def test_rows_give_each_runs_state(rows):
    assert {r["profile"] for r in rows} == {"smoke"}
    layers, cov = _by(rows, "layers"), _by(rows, "covariance")
    assert {k: r["state"] for k, r in layers.items()} == {
        ("vicreg", 0): "done", ("svmax", 0): "stale", ("vicreg_all", 0): "failed",
        ("svmax_all", 0): "running", ("pixels", 0): "missing", ("random_init", 0): "interrupted",
        ("supervised", 0): "missing", ("svmax_all@layer_weight=0.2", 0): "missing",
        ("vicreg_all@layer_weight=0.2", 0): "missing"}
    assert {k: r["state"] for k, r in cov.items()} == {
        ("vicreg", 0): "done", ("vicreg_nocov", 0): "missing", ("inv_only", 0): "missing",
        ("pixels", 0): "missing", ("random_init", 0): "interrupted", ("supervised", 0): "missing",
        ("vicreg@covariance=0.1", 0): "queued", ("vicreg@covariance=10.0", 0): "missing"}
    assert layers["vicreg_all", 0]["error"] == ERROR
    queued = cov["vicreg@covariance=0.1", 0]
    assert queued["slurm_job_id"] == "999999999_1" and queued["log"] == "/logs/999999999_1_0_log.out"
    assert queued["scheduler"] is None  # no such job, whether or not SLURM answers here
    assert all(r["slurm_job_id"] is None and r["log"] is None for r in rows if r is not queued)


def test_text_shows_counts_and_unfinished_runs(repo, capsys):
    assert main(["--params", str(repo / "params.yaml"), "--ablation", "layers,covariance"]) == 0
    counts, runs = _tables(capsys.readouterr().out)
    assert counts == [
        {"profile": "smoke", "ablation": "layers", "done": "1", "running": "1", "queued": "", "failed": "1",
         "diverged": "", "cancelled": "", "stale": "1", "missing": "4", "interrupted": "1", "total": "9"},
        {"profile": "smoke", "ablation": "covariance", "done": "1", "running": "", "queued": "1",
         "failed": "",
         "diverged": "", "cancelled": "", "stale": "", "missing": "5", "interrupted": "1", "total": "8"}]
    listed = {(r["run"], r["seed"]): r for r in runs}
    assert len(listed) == len(runs) == 12  # 17 rows, 4 shared runs once, vicreg done
    assert ("vicreg", "0") not in listed
    assert listed["random_init", "0"]["ablation"] == "layers,covariance"
    failed = listed["vicreg_all", "0"]
    assert failed["state"] == "failed" and failed["error"].startswith("RuntimeError: boom xxx")
    assert failed["error"].endswith("...") and len(failed["error"]) == 80
    queued = listed["vicreg@covariance=0.1", "0"]
    assert (queued["state"], queued["job"]) == ("queued", "999999999_1")
    assert queued["log"] == "/logs/999999999_1_0_log.out"


def test_all_lists_finished_runs_too(repo, capsys):
    main(["--params", str(repo / "params.yaml"), "--ablation", "layers", "--all"])
    _, runs = _tables(capsys.readouterr().out)
    assert [(r["run"], r["state"]) for r in runs] == [
        ("vicreg", "done"), ("vicreg_all", "failed"), ("svmax", "stale"), ("svmax_all", "running"),
        ("pixels", "missing"), ("random_init", "interrupted"), ("supervised", "missing"),
        ("svmax_all@layer_weight=0.2", "missing"), ("vicreg_all@layer_weight=0.2", "missing")]


def test_json_gives_the_rows(repo, rows, capsys):
    main(["--params", str(repo / "params.yaml"), "--json", "--ablation", "layers",
          "--ablation", "covariance"])
    assert json.loads(capsys.readouterr().out) == rows


def test_several_profiles(repo, capsys):
    main(["--params", str(repo / "params.yaml"), "--profile", "smoke,default", "--ablation", "layers"])
    counts, _ = _tables(capsys.readouterr().out)
    # default's configs differ from smoke's: the run finished for smoke is stale there
    assert [(c["profile"], c["done"], c["stale"], c["total"]) for c in counts] == [
        ("smoke", "1", "1", "9"), ("default", "", "2", "23")]


@pytest.mark.parametrize("args, message", [
    (["--profile", "tiny"], f"unknown profile 'tiny'; valid: {', '.join(group_options('profile'))}"),
    (["--ablation", "layers,nope"], f"unknown ablation 'nope'; valid: {', '.join(group_options('ablation'))}"),
])
def test_unknown_name_lists_valid_ones(repo, capsys, args, message):
    with pytest.raises(SystemExit) as exc:
        main(["--params", str(repo / "params.yaml"), *args])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_command_line(repo):
    embreg = Path(sys.executable).parent / "embreg"
    out = run_cmd([str(embreg), "status", "--params", "params.yaml", "--ablation", "layers"], repo).stdout
    counts, runs = _tables(out)
    assert [(c["ablation"], c["done"], c["total"]) for c in counts] == [("layers", "1", "9")]
    assert len(runs) == 8
    res = run_cmd([sys.executable, "-m", "embreg.sweep.status", "--params", str(repo / "params.yaml"), "--json",
                   "--ablation", "covariance"], repo)
    assert [r["state"] for r in json.loads(res.stdout)].count("missing") == 5
