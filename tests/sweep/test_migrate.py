"""`embreg migrate` on a temporary git copy of the repository with a history: runs written at one
commit in the earlier format (flat objective fields, a fingerprint of config and raw code), then
judged at a commit that changes only a docstring and plumbing (carried over, without retraining)
and at one that changes a term's code (its runs not carried)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml

from embreg.config import RunConfig
from embreg.fingerprint import TRAINING_CODE, fingerprint_parts, run_fingerprint
from embreg.params import PipelineParams
from embreg.rundir import run_dir, run_id
from embreg.sweep.plan import make_plan
from tests.conftest import copy_repo, git_commit, run_cmd, tool_env

TINY = {"name": "tiny2", "title": "T. Two arms", "question": "?", "arms": ["inv_only", "svmax"], "baselines": ["pixels"],
        "sweeps": [], "comparisons": [], "seeds": "${profile.seeds}", "sweep_seeds": "${profile.sweep_seeds}"}
SVMAX = Path("src/embreg/terms/svmax.py")


def git(repo: Path, *args: str) -> str:
    return run_cmd(["git", *args], repo).stdout.strip()


@pytest.fixture(scope="module")
def history(tmp_path_factory) -> dict[str, object]:
    """Commits A (the runs' revision: this checkout, its TRAINING_CODE written out as earlier
    revisions had it), B (A + a docstring of the SVMax term and a plumbing change) and C (B + a
    change to the SVMax term's code)."""
    repo = tmp_path_factory.mktemp("history")
    copy_repo(repo)
    (repo / "conf" / "ablation" / "tiny2.yaml").write_text(yaml.safe_dump(TINY))
    fp = repo / "src/embreg/fingerprint.py"
    text = fp.read_text()
    start = text.index("TRAINING_CODE: tuple[str, ...] = ")
    end = text.index("\n# what the sweep stage runs besides")
    fp.write_text(text[:start] + f"TRAINING_CODE: tuple[str, ...] = {TRAINING_CODE!r}" + text[end:])
    git_commit(repo, "A", init=True)
    revs = {"A": git(repo, "rev-parse", "HEAD")}
    svmax = (repo / SVMAX).read_text()
    (repo / SVMAX).write_text(svmax.replace('"""', '"""Reworded. ', 1))  # the module docstring
    io = repo / "src/embreg/io.py"
    io.write_text(io.read_text() + "\n\nPLUMBING_ONLY = 1  # through which runs pass without changing numbers\n")
    git_commit(repo, "B")
    revs["B"] = git(repo, "rev-parse", "HEAD")
    code = (repo / SVMAX).read_text()
    assert code.count("def svmax_loss(") <= 1
    (repo / SVMAX).write_text(code + "\n\nSCALE = 1.0  # read by nothing yet: a change of the term's code\n")
    git_commit(repo, "C")
    revs["C"] = git(repo, "rev-parse", "HEAD")
    return {"repo": repo, **revs}


def plan_configs(repo: Path, results: Path) -> dict[str, RunConfig]:
    os.environ["EMBREG_CONF"] = str(repo / "conf")
    try:
        plan = make_plan(PipelineParams(profile="smoke", overrides=["profile.ablations=[tiny2]",
                                                                    f"paths.results={results}"]))
    finally:
        os.environ.pop("EMBREG_CONF")
    return {run_id(cfg): cfg for cfg in plan.configs.values()}


def legacy_config(cfg: RunConfig) -> dict:
    """The config.yaml an earlier embreg wrote: flat objective fields, no runtime.replace."""
    d = asdict(cfg)
    obj = d["objective"]
    terms, params = obj.pop("terms"), obj.pop("params")
    obj.update({k: float(terms.get(k, 0.0)) for k in ("invariance", "variance", "covariance", "svmax")})
    var = params.get("variance", {})
    obj.update(gamma=var.get("gamma", 1.0), var_eps=var.get("eps", 1e-4), var_halve=var.get("halve", True),
               svmax_form=params.get("svmax", {}).get("form", "score"),
               margin=params.get("contrastive", {}).get("margin", 0.5))
    d["runtime"].pop("replace")
    return d


def legacy_fp(raw: dict, repo: Path) -> str:
    """The earlier rule (the reference): sha256 of the science config and of the raw bytes of the
    training files, as a checkout at ``repo`` would compute it."""
    pkg = repo / "src" / "embreg"
    files = sorted(f for rel in TRAINING_CODE for f in (sorted((pkg / rel).rglob("*.py")) if (pkg / rel).is_dir()
                                                         else [pkg / rel]))
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(pkg)).encode())
        h.update(f.read_bytes())
    sci = {k: v for k, v in raw.items() if k not in ("paths", "runtime", "ablation", "tag_keys")}
    sci["profile"] = {k: v for k, v in sci["profile"].items() if k not in ("seeds", "sweep_seeds", "baselines")}
    return hashlib.sha256(json.dumps({"config": sci, "code": h.hexdigest()[:16]}, sort_keys=True).encode()).hexdigest()[:16]


def write_run(cfg: RunConfig, raw: dict, revision: str, fingerprint: str = "0" * 16, **status) -> Path:
    rd = run_dir(cfg)
    rd.mkdir(parents=True)
    (rd / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    (rd / "metrics.json").write_text(json.dumps({"linear_top1": 50.0}))
    (rd / "status.json").write_text(json.dumps({"run_id": run_id(cfg), "seed": cfg.seed, "state": "done",
                                                "fingerprint": fingerprint, "git_revision": revision,
                                                "job_id": "1", **status}))
    return rd


def migrate(history: dict, rev: str, results: Path, *args: str) -> dict[str, dict]:
    """`embreg migrate` in the copy checked out at ``rev``, its own package imported: outcome per run."""
    repo = history["repo"]
    git(repo, "checkout", "-q", history[rev])
    params = results / "params.yaml"
    params.write_text(yaml.safe_dump({"dataset": "fashion_mnist", "default": {
        "profile": "smoke", "overrides": ["profile.ablations=[tiny2]", f"paths.results={results}"]}}))
    env = {**tool_env(), "PYTHONPATH": f"{repo / 'src'}:{repo / 'pipelines'}", "EMBREG_CONF": str(repo / "conf")}
    res = subprocess.run([sys.executable, "-m", "embreg.cli", "migrate", "--params", str(params), "--json", *args],
                         cwd=repo, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return {o["run"]: o for o in json.loads(res.stdout)}


def test_docstring_and_plumbing_changes_carry_the_runs_over(history, tmp_path):
    cfgs = plan_configs(history["repo"], tmp_path)
    for cfg in cfgs.values():
        write_run(cfg, legacy_config(cfg), history["A"])
    before = {rid: (run_dir(c) / "metrics.json").read_bytes() for rid, c in cfgs.items()}
    dry = migrate(history, "B", tmp_path, "--dry-run")
    assert {o["verdict"] for o in dry.values()} == {"carried over"}
    assert "terms" not in yaml.safe_load((run_dir(cfgs["svmax"]) / "config.yaml").read_text())["objective"]
    out = migrate(history, "B", tmp_path)
    assert {r: o["verdict"] for r, o in out.items()} == {f"{rid}/seed0": "carried over" for rid in cfgs}
    for rid, cfg in cfgs.items():
        status = json.loads((run_dir(cfg) / "status.json").read_text())
        assert status["fingerprint"] == run_fingerprint(cfg) and status["fingerprint_parts"] == fingerprint_parts(cfg)
        assert status["migrated"]["from_fingerprint"] == "0" * 16 and status["git_revision"] == history["A"]
        terms = yaml.safe_load((run_dir(cfg) / "config.yaml").read_text())["objective"]["terms"]
        assert {k: v for k, v in terms.items() if v > 0} == cfg.objective.trained()  # the current schema
        assert (run_dir(cfg) / "metrics.json").read_bytes() == before[rid]  # the result itself untouched
    again = migrate(history, "B", tmp_path)
    assert {o["verdict"] for o in again.values()} == {"already current"}


def test_a_change_to_a_terms_code_is_not_carried(history, tmp_path):
    cfgs = plan_configs(history["repo"], tmp_path)
    for cfg in cfgs.values():
        write_run(cfg, legacy_config(cfg), history["A"])
    out = migrate(history, "C", tmp_path)
    assert out["svmax/seed0"] == {"run": "svmax/seed0", "verdict": "not carried", "moved_to": None,
                                  "why": "code part term:svmax changed"}
    assert out["inv_only/seed0"]["verdict"] == out["pixels/seed0"]["verdict"] == "carried over"
    assert json.loads((run_dir(cfgs["svmax"]) / "status.json").read_text())["fingerprint"] == "0" * 16  # left as it was


def test_changed_config_unknown_revision_and_modified_checkouts(history, tmp_path):
    cfgs = plan_configs(history["repo"], tmp_path)
    raw = legacy_config(cfgs["inv_only"])
    raw["pretrain"]["epochs"] = 9  # trained by an earlier plan: not this one's run
    write_run(cfgs["inv_only"], raw, history["A"])
    write_run(cfgs["pixels"], legacy_config(cfgs["pixels"]), "f" * 40)
    raw = legacy_config(cfgs["svmax"])
    git(history["repo"], "checkout", "-q", history["A"])
    write_run(cfgs["svmax"], raw, history["A"] + "-dirty", legacy_fp(raw, history["repo"]))  # A's code: carried
    out = migrate(history, "B", tmp_path)
    assert out["inv_only/seed0"]["why"] == "config changed: pretrain.epochs"
    assert out["pixels/seed0"]["why"] == f"revision unknown: {'f' * 40} is not in this repository"
    assert out["svmax/seed0"]["verdict"] == "carried over"
    status = json.loads((run_dir(cfgs["svmax"]) / "status.json").read_text())
    status.update(fingerprint="1" * 16, fingerprint_parts=None)  # the code that trained it was not A's
    (run_dir(cfgs["svmax"]) / "status.json").write_text(json.dumps(status))
    out = migrate(history, "B", tmp_path)
    assert out["svmax/seed0"]["why"] == (f"trained in a modified checkout of {history['A'][:12]} whose code was not "
                                         "that revision's")


def test_a_run_by_hand_moves_where_the_naming_rule_puts_it(history, tmp_path):
    cfgs = plan_configs(history["repo"], tmp_path)
    raw = legacy_config(cfgs["inv_only"])
    raw["pretrain"]["epochs"] = 1
    rd = write_run(cfgs["inv_only"], raw, history["A"], job_id=None)  # no scheduler job: a run by hand
    out = migrate(history, "B", tmp_path)
    assert out["inv_only/seed0"] == {"run": "inv_only/seed0", "verdict": "carried over", "why": "",
                                     "moved_to": "inv_only@epochs=1/seed0"}
    moved = rd.parent.with_name("inv_only@epochs=1") / "seed0"
    assert not rd.exists() and json.loads((moved / "metrics.json").read_text()) == {"linear_top1": 50.0}
    assert yaml.safe_load((moved / "config.yaml").read_text())["tag_keys"] == ["pretrain.epochs"]
    # the profile's own run is missing now: the sweep trains it, and never replaces the hand run
    out = migrate(history, "B", tmp_path)
    assert out == {"inv_only@epochs=1/seed0": {"run": "inv_only@epochs=1/seed0", "verdict": "already current",
                                                "why": "", "moved_to": None}}


@pytest.mark.parametrize("extra", [["pretrain.epochs=1", "optim.lr=0.01"], ["optim.lr=0.01"], []])
def test_the_hand_run_rule_is_embreg_trains(extra):
    """migrate names a run by hand as `python -m embreg.train` would have placed it."""
    from hydra import compose, initialize_config_dir

    from embreg.params import compose_run, conf_dir
    from embreg.sweep.migrate import _hand_place
    from embreg.train import place_hand_run

    ov = ["objective=svmax", "seed=0", *extra]
    cfg, other = compose_run("smoke", ov), compose_run("smoke", ov)
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        placed = place_hand_run(other, ["profile=smoke", *ov], compose)
    mine = _hand_place(cfg, {}, cfg)
    assert (mine.tag_keys if mine else []) == placed.tag_keys
