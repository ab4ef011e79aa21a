"""A finished result is never lost, and every failure says so. Each test sets up the
on-disk state a user met (a finished run, a bad config, a killed process, a corrupt file) and
checks what the real entry points do with it: ``run_one``, ``python -m embreg.train``, the
sweep's plan and launch, ``embreg status`` and the prepare stage."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from embreg import terms
from embreg.attempt import RunLock, RunLockedError, alive, attempt_dir, finite, strict_json
from embreg.checks import ConfigError
from embreg.data import DataUnavailableError
from embreg.fingerprint import run_fingerprint
from embreg.io import write_json
from embreg.params import LocalParams, PipelineParams, load_params
from embreg.pretrain import CheckpointWarning
from embreg.run import run_one
from embreg.rundir import checkpoint_path, lock_path, run_dir
from embreg.sweep.launch import launch
from embreg.sweep.plan import Job, make_plan, pending, states, validate_plan
from embreg.sweep.status import main as status_main
from embreg.train import check_overrides
from tests.conftest import REPO, tool_env

FILES = ("config.yaml", "status.json", "metrics.json", "spectra.json")


def _snapshot(rd: Path) -> dict[str, tuple[bytes, int]]:
    return {f.name: (f.read_bytes(), f.stat().st_mtime_ns) for f in sorted(rd.iterdir()) if f.is_file()}


def _train(cfg, *overrides: str, check: bool = False) -> subprocess.CompletedProcess:
    """``python -m embreg.train`` on ``cfg``'s data and paths, with ``overrides``."""
    p = cfg.paths
    cmd = [sys.executable, "-m", "embreg.train", "profile=smoke", f"paths.data={p.data}",
           f"paths.results={p.results}", f"paths.checkpoints={p.checkpoints}", "runtime.progress=false", *overrides]
    return subprocess.run(cmd, cwd=REPO, env=tool_env(), capture_output=True, text=True, check=check)


def _one_line(res: subprocess.CompletedProcess) -> str:
    err = res.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


@pytest.fixture
def finished(smoke_cfg):
    """A finished random-init run (the cheapest: nothing is trained) and its files."""
    cfg = smoke_cfg("objective=random_init")
    assert run_one(cfg)["state"] == "done"
    return cfg, run_dir(cfg), _snapshot(run_dir(cfg))


# ---------------------------------------------------------------- 1. a bad config deletes nothing
@pytest.mark.parametrize("bad", ["objective.space=sphere", "optim.batch_size=1", "+objective.terms.svmax=-1",
                                 "+objective.params.variance.gamma=nan", "+objective.terms.nosuch=1"])
def test_bad_config_is_refused_before_anything_is_written(finished, smoke_cfg, bad):
    cfg, rd, before = finished
    with pytest.raises(ConfigError, match=bad.split("=")[0].lstrip("+").replace(".", r"\.")):
        run_one(smoke_cfg("objective=random_init", bad))
    assert _snapshot(rd) == before


def test_bad_config_on_the_command_line_exits_2_and_keeps_the_result(finished):
    cfg, rd, before = finished
    res = _train(cfg, "objective=random_init", "objective.space=sphere", "seed=0")
    assert res.returncode == 2
    assert _one_line(res) == "error: invalid config: objective.space=sphere: unknown; valid: raw, l2"
    assert _snapshot(rd) == before


def test_sweep_reports_every_bad_run_at_once_and_launches_nothing(smoke_cfg, tmp_path):
    cfg = smoke_cfg()
    params = PipelineParams(profile="smoke", data_dir=cfg.paths.data, overrides=[
        f"paths.results={cfg.paths.results}", f"paths.checkpoints={cfg.paths.checkpoints}",
        "optim.batch_size=1"], local=LocalParams(max_parallel=1))
    plan = make_plan(params, ["layers"])
    with pytest.raises(ConfigError) as err:
        launch(plan, params, tmp_path / "sweep.log")
    lines = str(err.value).splitlines()
    assert lines[0] == f"{len(plan.jobs)} of {len(plan.jobs)} runs have an invalid config; nothing was launched:"
    assert len(lines) == 1 + len(plan.jobs)
    assert all("optim.batch_size=1: must be an integer >= 2" in line for line in lines[1:])
    assert {line.split(":")[0] for line in lines[1:]} == {f"run {rid} seed0" for rid in plan.run_ids().values()}
    assert not Path(cfg.paths.results).exists() and not (tmp_path / "sweep.log").exists()


# ------------------------------------------- 2. a retrain replaces a result only once it finished
def test_failed_retrain_keeps_the_old_result_and_a_finished_one_replaces_it(finished, smoke_cfg, tmp_path):
    cfg, rd, before = finished
    broken = tmp_path / "broken"
    shutil.copytree(cfg.paths.data, broken)
    test_images = broken / "fashion_mnist" / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte"
    test_images.write_bytes(test_images.read_bytes()[:1000])  # training data fine, test split truncated
    # a retrain by the sweep (runtime.replace: the directory is its to update)
    changed = smoke_cfg("objective=random_init", "eval.knn_temperature=0.1", f"paths.data={broken}",
                        "runtime.replace=true")
    status = run_one(changed)
    assert status["state"] == "failed"
    assert _snapshot(rd) == before  # the older result is untouched
    assert (attempt_dir(rd) / "error.txt").is_file()
    plan_states = _states(changed, ["layers"])
    assert plan_states[Job("random_init", 0)] == "failed"  # the latest attempt is what is reported
    again = smoke_cfg("objective=random_init", "eval.knn_temperature=0.1", "runtime.replace=true")
    assert run_one(again)["state"] == "done"
    after = json.loads((rd / "metrics.json").read_text())
    assert after["fingerprint"] == run_fingerprint(again) != json.loads(before["metrics.json"][0])["fingerprint"]
    assert not attempt_dir(rd).exists()


def _states(cfg, ablations: list[str]) -> dict[Job, str]:
    params = PipelineParams(profile="smoke", data_dir=cfg.paths.data, overrides=[
        f"paths.results={cfg.paths.results}", f"paths.checkpoints={cfg.paths.checkpoints}",
        f"eval.knn_temperature={cfg.eval.knn_temperature}"])
    return states(make_plan(params, ablations))


# ------------------------------------------------------ 4. a missing metrics.json is retrained
@pytest.mark.parametrize("damage", ["delete", "nan"])
def test_run_without_valid_metrics_is_not_finished_and_is_retrained(finished, damage):
    cfg, rd, _ = finished
    metrics = rd / "metrics.json"
    if damage == "delete":
        metrics.unlink()
    else:
        metrics.write_text(metrics.read_text().replace('"linear_top1": ', '"linear_top1": NaN, "x": '))
    plan = make_plan(PipelineParams(profile="smoke", data_dir=cfg.paths.data, overrides=[
        f"paths.results={cfg.paths.results}", f"paths.checkpoints={cfg.paths.checkpoints}"]), ["layers"])
    assert states(plan)[Job("random_init", 0)] == "incomplete"
    assert Job("random_init", 0) in pending(plan)
    assert run_one(cfg)["state"] == "done"
    assert "linear_top1" in strict_json(metrics)


# --------------------------------------------------- 3. nothing trained is refused; JSON is JSON
def test_zero_epochs_for_a_trained_arm_is_refused(smoke_cfg):
    cfg = smoke_cfg("objective=vicreg", "pretrain.epochs=0")
    with pytest.raises(ConfigError, match=r"pretrain\.epochs=0: must be an integer >= 1"):
        run_one(cfg)
    assert not run_dir(cfg).exists()


def test_non_finite_values_become_null_with_a_reason():
    clean, why = finite({"a": float("nan"), "b": {"c": [1.0, float("inf")]}, "d": 2})
    assert clean == {"a": None, "b": {"c": [1.0, None]}, "d": 2}
    assert why == {"a": "not a finite number (nan)", "b.c[1]": "not a finite number (inf)"}
    json.dumps(clean, allow_nan=False)


# -------------------------------------------------------- 5. a corrupt checkpoint is set aside
def test_unreadable_checkpoint_is_set_aside_and_training_restarts(smoke_cfg):
    cfg = smoke_cfg("objective=vicreg", "eval.semi_supervised=false")
    ckpt = checkpoint_path(cfg)
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"PK\x03\x04 truncated after a kill")
    with pytest.warns(CheckpointWarning, match="cannot be read.*restarts from scratch"):
        status = run_one(cfg)
    assert status["state"] == "done"
    aside = list(ckpt.parent.glob("last.pt.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == b"PK\x03\x04 truncated after a kill"
    assert json.loads((run_dir(cfg) / "metrics.json").read_text())["resumed_at_steps"] == []


# ------------------------------------------------------------------ 6. exit codes tell the truth
def test_diverged_run_exits_non_zero(smoke_cfg):
    cfg = smoke_cfg()
    res = _train(cfg, "objective=vicreg", "optim.name=sgd", "optim.lr=1e30", "eval.semi_supervised=false")
    assert res.returncode == 1, res.stderr[-2000:]
    # a hand run with overrides has a place of its own, named after what it changes
    assert "vicreg@name=sgd@lr=1e+30 seed0: diverged (loss is" in res.stdout


# -------------------------------------------------------- 7. one unreadable status.json
def test_unreadable_status_is_one_line_and_the_run_is_retrained(finished, capsys):
    cfg, rd, _ = finished
    (rd / "status.json").write_text('{"state": "do')  # cut off mid-write by a full disk
    root = Path(cfg.paths.results).parent
    (root / "params.yaml").write_text(yaml.safe_dump({
        "default": {"profile": "smoke", "overrides": [f"paths.results={cfg.paths.results}",
                                                     f"paths.checkpoints={cfg.paths.checkpoints}"]},
        "dataset": "fashion_mnist", "data": {"dir": cfg.paths.data}}))
    assert status_main(["--params", str(root / "params.yaml"), "--ablation", "layers"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"warning: unreadable status file {rd / 'status.json'}: Unterminated string starting at: "
                   "line 1 column 11 (char 10); `dvc repro` retrains the run"]
    plan = make_plan(load_params(root / "params.yaml"), ["layers"])
    assert states(plan)[Job("random_init", 0)] == "unreadable" and Job("random_init", 0) in pending(plan)
    assert run_one(cfg)["state"] == "done" and strict_json(rd / "status.json")["state"] == "done"


# ----------------------------------------------------------------- 8. one process per run
def test_second_process_for_the_same_run_is_refused(smoke_cfg):
    cfg = smoke_cfg("objective=random_init")
    with RunLock(lock_path(cfg), "test"):
        with pytest.raises(RunLockedError, match=f"already being trained by pid {os.getpid()} on"):
            run_one(cfg)
        res = _train(cfg, "objective=random_init")
        assert res.returncode == 2
        assert _one_line(res).startswith("error: run random_init seed0 is already being trained by pid")
    assert not run_dir(cfg).exists()


def test_a_run_whose_process_is_gone_shows_interrupted(smoke_cfg):
    cfg = smoke_cfg("objective=random_init")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    write_json(run_dir(cfg) / "status.json", {"state": "running", "host": socket.gethostname(),
                                              "pid": int(dead), "fingerprint": "x"})
    assert _states(cfg, ["layers"])[Job("random_init", 0)] == "interrupted"
    with RunLock(lock_path(cfg), "test"):  # while a process holds the run, it is running
        assert _states(cfg, ["layers"])[Job("random_init", 0)] == "running"


# ------------------------------------------------------------ 9. one line, never a traceback
@pytest.mark.parametrize("override, message", [
    ("optim.foo=1", "error: override 'optim.foo=1': the config has no key 'optim.foo'; optim has: batch_size, "
                    "lars_eta, lr, momentum, name, warmup_epochs, weight_decay"),
    ("optim.lr=0.1=2[", "error: malformed override 'optim.lr=0.1=2['; an override is key=value, e.g. optim.lr=0.01"),
    ("seed=abc", "error: override 'seed=abc': Value 'abc' of type 'str' could not be converted to Integer"),
])
def test_bad_override_on_the_command_line_is_one_line(smoke_cfg, override, message):
    res = _train(smoke_cfg(), override)
    assert res.returncode == 2 and _one_line(res) == message


def test_results_path_that_is_a_file_is_one_line(smoke_cfg, tmp_path):
    (tmp_path / "taken").write_text("")
    res = _train(smoke_cfg(), "objective=random_init", f"paths.results={tmp_path}/taken/sub")
    assert res.returncode == 2
    assert _one_line(res) == (f"error: invalid config: paths.results={tmp_path}/taken/sub: {tmp_path}/taken "
                              "is a file, not a directory; choose another path")


def test_truncated_prepared_data_is_one_line(smoke_cfg, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(smoke_cfg().paths.data, data)
    images = data / "fashion_mnist" / "FashionMNIST" / "raw" / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:5000])
    cfg = smoke_cfg("objective=random_init", f"paths.data={data}")
    with pytest.raises(DataUnavailableError, match="cannot read the prepared fashion_mnist under .* run `dvc repro"):
        run_one(cfg)
    assert not run_dir(cfg).exists()


def _prepare(tmp_path: Path, data_dir: str, mirror: Path) -> subprocess.CompletedProcess:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({
        "default": {"profile": "smoke"}, "dataset": "fashion_mnist",
        "data": {"dir": data_dir, "mirrors": {"fashion_mnist": str(mirror)}}}))
    return subprocess.run([sys.executable, str(REPO / "pipelines" / "prepare.py")], cwd=tmp_path, env=tool_env(),
                          capture_output=True, text=True)


def test_truncated_mirror_file_and_read_only_data_dir_are_one_line(tmp_path, fmnist_mirror):
    mirror = tmp_path / "mirror"
    shutil.copytree(fmnist_mirror, mirror)
    gz = mirror / "train-images-idx3-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:3000])
    res = _prepare(tmp_path, "data", mirror)
    assert res.returncode == 1
    assert _one_line(res).startswith("error: cannot read fashion_mnist from ")
    assert "truncated or corrupt" in res.stderr and not (tmp_path / "results").exists()
    res = _prepare(tmp_path, "/sys/embreg-data", fmnist_mirror)  # a file system nobody may write to
    assert res.returncode == 1
    assert _one_line(res) == "error: [Errno 1] Operation not permitted: '/sys/embreg-data'"


# ------------------------------------------------------------------------- 10. validation gaps
@pytest.mark.parametrize("override, message", [
    ("objective.params.variance.gamma=nan", "objective.params.variance.gamma=nan: must be a finite number > 0"),
    ("+objective.params.variance.gama=1", "objective.params.variance.gama=1: term 'variance' has no parameter "
                                          "'gama'; valid: gamma, eps, halve"),
    ("+objective.terms.barlow_twins=1", "objective.terms.barlow_twins=1.0: unknown loss term; valid: {terms}"),
    ("seed=-1", "seed=-1: must be an integer >= 0"),
    ("optim.batch_size=10000", "optim.batch_size=10000: must be <= the 500 images of fashion_mnist's training split"),
])
def test_validation_names_key_value_and_what_is_allowed(smoke_cfg, override, message):
    cfg = smoke_cfg("objective=vicreg", override)
    with pytest.raises(ConfigError) as err:
        run_one(cfg)
    assert str(err.value) == "invalid config: " + message.format(terms=", ".join(terms.names()))
    assert not run_dir(cfg).exists()


@pytest.mark.parametrize("edit, message", [
    ({"local": {"max_parallel": -3}}, "local.max_parallel=-3: must be an integer >= 0"),
    ({"launcher": "kubernetes"}, "launcher=kubernetes: unknown; valid: local, slurm"),
    ({"defualt": {"seeds": [0]}}, "unknown key 'defualt' (did you mean 'default'?); valid: dataset, data, launcher, "
                                  "local, slurm, default, robustness, or a pipeline's section (a mapping with "
                                  "profile: <name>)"),
    ({"default": {"profile": "smoke", "overrides": ["optim.lr"]}},
     "default.overrides: malformed override 'optim.lr'; an override is key=value, e.g. optim.lr=0.01"),
])
def test_bad_params_yaml_is_one_line_at_every_entry_point(tmp_path, capsys, edit, message):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({**raw, **edit}))
    with pytest.raises(ConfigError) as err:
        load_params(tmp_path / "params.yaml")
    assert str(err.value) == f"{tmp_path / 'params.yaml'}: {message}"
    assert status_main(["--params", str(tmp_path / "params.yaml")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'params.yaml'}: {message}\n"


def test_check_overrides_composes_like_a_run(prepared_data):
    data = f"paths.data={prepared_data}"
    check_overrides(["profile=smoke", "objective=svmax", "optim.lr=0.1", data])
    with pytest.raises(ConfigError, match="the config has no key 'foo'"):
        check_overrides(["foo.bar=1", data])
    with pytest.raises(ConfigError, match="the config has no key 'pretrain.foo'; pretrain has: epochs, "):
        check_overrides(["profile=smoke", "+pretrain.foo=1", data])  # Hydra adds it; the run would drop it
    with pytest.raises(ConfigError, match=r"optim\.batch_size=0: must be an integer >= 2"):
        check_overrides(["-m", "profile=smoke", "optim.batch_size=32,0", data])  # every value of a sweep
    with pytest.raises(DataUnavailableError, match="is not prepared under"):
        check_overrides(["profile=smoke", "paths.data=/nonexistent"])


def test_plan_validation_reads_the_data_once_per_dataset(smoke_cfg):
    cfg = smoke_cfg()
    plan = make_plan(PipelineParams(profile="smoke", data_dir=cfg.paths.data, overrides=[
        f"paths.results={cfg.paths.results}", "optim.batch_size=501"]), ["layers"])
    with pytest.raises(ConfigError, match="must be <= the 500 images"):
        validate_plan(plan)


# --------------------------------------------------------- 12. a failed prepare keeps the card
@pytest.mark.slow
def test_failed_prepare_keeps_the_committed_card(tmp_path, fmnist_mirror):
    from tests.conftest import copy_repo, run_cmd, use_pipeline

    repo = tmp_path / "repo"
    copy_repo(repo)
    mirror = tmp_path / "mirror"
    shutil.copytree(fmnist_mirror, mirror)
    p = yaml.safe_load((repo / "params.yaml").read_text())
    use_pipeline(p, "smoke")
    p.update({"data": {"dir": "data", "mirrors": {"fashion_mnist": str(mirror)}}})
    (repo / "params.yaml").write_text(yaml.safe_dump(p))
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    run_cmd(["git", "init", "-q"], repo)
    run_cmd(["dvc", "repro", "prepare"], repo)
    run_cmd([*git, "add", "-A"], repo)
    run_cmd([*git, "commit", "-qm", "prepared"], repo)
    card = {f: (repo / "results" / "data" / f).read_bytes() for f in ("fashion_mnist.json", "fashion_mnist.md")}
    gz = mirror / "train-images-idx3-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:3000])  # the mirror is damaged, and prepare must run again
    conf = repo / "conf" / "dataset" / "fashion_mnist.yaml"
    conf.write_text(conf.read_text() + "# touched\n")
    res = run_cmd(["dvc", "repro", "prepare"], repo, check=False)
    assert res.returncode != 0 and "truncated or corrupt" in res.stderr + res.stdout
    assert {f: (repo / "results" / "data" / f).read_bytes() for f in card} == card
    assert run_cmd(["git", "status", "--porcelain", "results"], repo).stdout == ""


# ----------------------------------------------- 2. an interrupted sweep leaves no job behind
def _processes_in(cwd: Path) -> list[str]:
    """Processes (not zombies) whose working directory is ``cwd``: the sweep's jobs inherit it."""
    out = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if Path(os.readlink(proc / "cwd")) == cwd and (proc / "stat").read_text().rpartition(")")[2].split()[0] != "Z":
                out.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:200])
        except OSError:
            continue
    return out


def _files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


# A stand-in for DVC: no DVC_STAGE in its own environment; it starts the stage through a shell
# with DVC_STAGE set, as DVC does (dvc/stage/run.py), and waits for it.
_FAKE_DVC = """
import os, subprocess, sys
shell, out = sys.argv[1], sys.argv[2]
stage = ("import sys, time; sys.path.insert(0, 'pipelines'); from _common import stop_on_signals\\n"
         "stop_on_signals(); open(%r, 'w').write('watching')\\n"
         "try:\\n    time.sleep(120)\\nexcept KeyboardInterrupt as exc:\\n    open(%r, 'w').write(str(exc))" % (out, out))
env = {**os.environ, "DVC_STAGE": "sweep"}
p = subprocess.Popen([shell, "-c", f"{sys.executable} -c \\"{stage}\\""], env=env)
p.wait()
"""


@pytest.mark.parametrize("shell", ["/bin/sh", "/bin/bash"])
def test_the_stage_stops_when_dvc_dies_whatever_the_shell_between(tmp_path, shell):
    """DVC runs a stage through $SHELL -c; bash execs the command, dash (/bin/sh) waits for it,
    alive after DVC dies. Either way the stage notices DVC is gone and stops like on TERM."""
    import signal
    import time

    out = tmp_path / "stage.out"
    fake = subprocess.Popen([sys.executable, "-c", _FAKE_DVC, shell, str(out)], cwd=REPO)
    deadline = time.monotonic() + 60
    while not (out.exists() and out.read_text() == "watching"):
        assert time.monotonic() < deadline and fake.poll() is None
        time.sleep(0.1)
    fake.send_signal(signal.SIGKILL)  # DVC gone at once; kept a zombie (not reaped) meanwhile
    deadline = time.monotonic() + 10
    while out.read_text() == "watching" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert out.read_text() == f"signal {int(signal.SIGTERM)}"
    fake.wait()


@pytest.mark.slow
@pytest.mark.parametrize("target", ["sweep", "dvc"])
def test_term_stops_every_job_and_nothing_writes_afterwards(tmp_path, fmnist_mirror, target):
    """TERM on the sweep stage, or on `dvc repro` (which dies at once and does not pass it on:
    the stage notices that its parent is gone), while a local job is training."""
    import time

    from tests.conftest import copy_repo, run_cmd, use_pipeline

    repo = tmp_path / "repo"
    copy_repo(repo)
    p = yaml.safe_load((repo / "params.yaml").read_text())
    use_pipeline(p, "smoke", ["pretrain.steps_per_epoch=40"])
    p.update({"data": {"dir": "data", "mirrors": {"fashion_mnist": str(fmnist_mirror)}},
              "local": {"max_parallel": 2, "threads_per_job": 1}})
    (repo / "params.yaml").write_text(yaml.safe_dump(p))
    if target == "dvc":
        run_cmd(["git", "init", "-q"], repo)
        run_cmd(["dvc", "repro", "prepare"], repo)
        cmd = ["dvc", "repro", "sweep"]
    else:
        run_cmd([sys.executable, "pipelines/prepare.py"], repo)
        cmd = [sys.executable, "pipelines/sweep.py"]
    env = {**tool_env(), "SHELL": "/bin/sh"}  # DVC's shell: dash does not exec the stage, and outlives DVC
    proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    runs = repo / "results" / "smoke" / "runs"
    deadline = time.monotonic() + 300
    while not any(s.stat().st_size and json.loads(s.read_text()).get("state") == "running"
                  for s in runs.glob("*/seed*/status.json")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.5)
    time.sleep(2)  # a job is training now
    assert len(_processes_in(repo)) >= 3  # the stage, its multirun, the job controller and the job
    proc.terminate()
    out, err = proc.communicate(timeout=120)
    if target == "sweep":
        assert proc.returncode == 130, err[-3000:]
        assert err.strip().splitlines()[-1].startswith("interrupted (signal 15): every job this stage started")
    deadline = time.monotonic() + 60  # dvc died at once; the orphaned stage stops its jobs, then exits
    while _processes_in(repo) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _processes_in(repo) == []
    before = _files(repo / "results")
    time.sleep(20)
    assert _files(repo / "results") == before
    # a job killed before it could record why (TERM while it was starting) still says running in
    # its file; nobody holds its lock, so it shows as interrupted, as `embreg status` shows it
    stopped = {s.parent.parent.name: alive(json.loads(s.read_text()),
                                           repo / "checkpoints" / "smoke" / s.parent.parent.name / "seed0" / "run.lock")
               for s in runs.glob("*/seed*/status.json")}
    assert stopped and all(s["state"] in ("done", "interrupted") for s in stopped.values()), stopped
    assert any(s["state"] == "interrupted" for s in stopped.values())


# ----------------------------------------------- the swap, and what the analysis makes of it
def _result(rd: Path, value: float) -> None:
    write_json(rd / "status.json", {"state": "done", "fingerprint": str(value)})
    write_json(rd / "metrics.json", {"linear_top1": value})


@pytest.mark.parametrize("new_finished", [True, False])
def test_a_swap_cut_between_its_renames_is_completed_or_undone(tmp_path, new_finished):
    from embreg.attempt import _old_dir, recover, work_dir

    rd = tmp_path / "runs" / "vicreg" / "seed0"
    _result(_old_dir(rd), 1.0)  # the first rename happened: the old result moved aside
    nxt = attempt_dir(rd)
    if new_finished:
        _result(nxt, 2.0)
    else:
        write_json(nxt / "status.json", {"state": "running"})
    recover(rd)
    assert json.loads((rd / "metrics.json").read_text())["linear_top1"] == (2.0 if new_finished else 1.0)
    assert not _old_dir(rd).exists()
    assert work_dir(rd) == nxt  # a result is there again: the next attempt works beside it


def test_analysis_marks_an_older_result_whose_retraining_failed(tmp_path):
    from embreg.analysis.aggregate import load_seed

    rd = tmp_path / "seed0"
    _result(rd, 1.0)
    assert load_seed("vicreg", 0, rd, "done").ok
    run = load_seed("vicreg", 0, rd, "failed")
    assert (run.state, run.error) == ("failed", "its latest attempt is failed; this result is older")
    assert run.metrics == {}
