"""`embreg export` and `embreg import` (embreg.sweep.export, merge, bundle): a smoke profile's
finished runs carried from one machine's results to another's in one archive, and every archive
or run an import must refuse: altered files, paths outside the runs, links, runs of other config
or code, unfinished runs, and a finished run already there that it would replace."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from embreg.analysis.aggregate import load_results
from embreg.fingerprint import code_hash
from embreg.params import load_params
from embreg.rundir import State, observe
from embreg.sweep.bundle import MANIFEST, sha256
from embreg.sweep.export import main as export_main
from embreg.sweep.merge import main as import_main
from embreg.sweep.plan import make_plan

# the smoke profile cut to four planned runs (covariance's three arms and the raw-pixel
# reference); two of them are trained, so the archive holds two and lists two as missing
SMALL = ["profile.ablations=[covariance]", "profile.baselines=[pixels]", "profile.sweep_seeds=[]",
         "runtime.progress=false", "runtime.threads=1"]
TRAINED = ("vicreg", "pixels")


def machine(root: Path, data: Path, *extra: str) -> Path:
    """A params file whose runs live under ``root`` (paths are no part of a fingerprint)."""
    root.mkdir(parents=True, exist_ok=True)
    params = {"default": {"profile": "smoke", "overrides": [*SMALL, f"paths.results={root}/results",
                                                            f"paths.checkpoints={root}/ckpt", *extra]},
              "dataset": "fashion_mnist", "data": {"dir": str(data)}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root / "params.yaml"


@pytest.fixture(scope="module")
def exported(tmp_path_factory, prepared_data) -> tuple[Path, Path]:
    """Machine A: two of the plan's four runs trained, then exported."""
    from embreg.run import run_one

    params = machine(tmp_path_factory.mktemp("A"), prepared_data)
    for job, cfg in make_plan(load_params(params)).configs.items():
        if job.arm in TRAINED:
            assert run_one(cfg)["state"] == State.DONE
    archive = params.parent / "smoke-runs.tar.gz"
    assert export_main(["--params", str(params), "--out", str(archive)]) == 0
    return params, archive


def members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}


def repack(src: Path, dst: Path, edit: Callable[[dict[str, bytes]], None],
           extra: Callable[[tarfile.TarFile], None] | None = None) -> Path:
    """``src`` with its members edited (and ``extra`` members added) as a new archive."""
    files = members(src)
    edit(files)
    with tarfile.open(dst, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if extra:
            extra(tar)
    return dst


def rewrite(files: dict[str, bytes], run: str, name: str, change: Callable[[dict], None]) -> None:
    """Change a run's JSON file and record its new sha256 in the manifest (an honest archive of it)."""
    doc = json.loads(files[f"runs/{run}/{name}"])
    change(doc)
    files[f"runs/{run}/{name}"] = json.dumps(doc).encode()
    manifest = json.loads(files[MANIFEST])
    for entry in manifest["runs"]:
        if f"{entry['run_id']}/seed{entry['seed']}" == run:
            entry["files"][name] = sha256(files[f"runs/{run}/{name}"])
    files[MANIFEST] = json.dumps(manifest).encode()


def runs_here(params: Path) -> dict[str, str]:
    """Each planned run's state on the machine of ``params``."""
    plan = make_plan(load_params(params))
    return {f"{cfg.arm}/seed{cfg.seed}": observe(cfg).state.value for cfg in plan.configs.values()}


def test_export_packs_the_finished_runs_and_no_checkpoint(exported) -> None:
    params, archive = exported
    files = members(archive)
    manifest = json.loads(files.pop(MANIFEST))
    assert manifest["profile"] == "smoke" and manifest["code_hash"] == code_hash() and manifest["format"] == 1
    assert sorted(f"{r['run_id']}/seed{r['seed']}" for r in manifest["runs"]) == ["pixels/seed0", "vicreg/seed0"]
    untrained = {run for run in runs_here(params) if run.split("/")[0] not in TRAINED}  # covariance's other arms
    assert untrained and {k: v["state"] for k, v in manifest["not_exported"].items()} == dict.fromkeys(untrained, "missing")
    assert not any(name.endswith(".pt") for name in files)
    assert (params.parent / "ckpt" / "vicreg" / "seed0" / "last.pt").is_file()  # it exists, and stayed behind
    for run in manifest["runs"]:
        for name, digest in run["files"].items():
            data = files[f"runs/{run['run_id']}/seed0/{name}"]
            assert sha256(data) == digest
            assert data == (params.parent / "results" / "runs" / run["run_id"] / "seed0" / name).read_bytes()
    assert set(manifest["runs"][0]["files"]) >= {"status.json", "metrics.json", "config.yaml"}


def test_import_merges_the_runs_and_a_second_import_keeps_them(exported, prepared_data, tmp_path, capsys) -> None:
    src, archive = exported
    dst = machine(tmp_path / "B", prepared_data)
    assert import_main([str(archive), "--params", str(dst)]) == 0
    assert "imported 2 runs" in capsys.readouterr().out
    assert runs_here(dst) == {run: "done" if run.split("/")[0] in TRAINED else "missing" for run in runs_here(src)}
    for run in TRAINED:
        for f in (src.parent / "results" / "runs" / run / "seed0").iterdir():
            assert (tmp_path / "B" / "results" / "runs" / run / "seed0" / f.name).read_bytes() == f.read_bytes()
    manifest = json.loads((tmp_path / "B" / "results" / "runs" / "manifest.json").read_text())
    assert manifest["runs"]["vicreg"] == {"0": "done"} and manifest["runs"]["inv_only"] == {"0": "missing"}
    here, there = load_results(tmp_path / "B" / "results"), load_results(src.parent / "results")  # what the analysis reads
    assert here.runs["vicreg"][0].ok and here.runs["vicreg"][0].metrics == there.runs["vicreg"][0].metrics
    assert here.runs["inv_only"][0].state == "missing"
    before = (tmp_path / "B" / "results" / "runs" / "vicreg" / "seed0" / "status.json").stat().st_mtime_ns
    assert import_main([str(archive), "--params", str(dst)]) == 0
    assert "imported 0 runs" in (out := capsys.readouterr().out) and "2 already here" in out
    assert (tmp_path / "B" / "results" / "runs" / "vicreg" / "seed0" / "status.json").stat().st_mtime_ns == before


def test_an_altered_file_refuses_the_whole_archive(exported, prepared_data, tmp_path, capsys) -> None:
    _, archive = exported

    def alter(files: dict[str, bytes]) -> None:
        files["runs/vicreg/seed0/metrics.json"] = files["runs/vicreg/seed0/metrics.json"].replace(b"{", b"{ ", 1)

    bad = repack(archive, tmp_path / "bad.tar.gz", alter)
    dst = machine(tmp_path / "B", prepared_data)
    assert import_main([str(bad), "--params", str(dst)]) == 1
    err = capsys.readouterr().err
    assert "run vicreg/seed0: metrics.json does not match its sha256" in err and "nothing was imported" in err
    assert not (tmp_path / "B" / "results").exists()


def test_paths_outside_the_runs_and_links_are_refused(exported, prepared_data, tmp_path, capsys) -> None:
    _, archive = exported

    def evil(tar: tarfile.TarFile) -> None:
        for name in ("../evil.json", "runs/../../evil.json", "/tmp/evil.json"):
            info = tarfile.TarInfo(name)
            info.size = 2
            tar.addfile(info, io.BytesIO(b"{}"))
        link = tarfile.TarInfo("runs/vicreg/seed0/history.json.lnk")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)

    (tmp_path / "work").mkdir()
    bad = repack(archive, tmp_path / "work" / "bad.tar.gz", lambda files: None, evil)
    dst = machine(tmp_path / "work" / "B", prepared_data)
    assert import_main([str(bad), "--params", str(dst)]) == 1
    err = capsys.readouterr().err
    for name in ("../evil.json", "runs/../../evil.json", "/tmp/evil.json"):
        assert f"member {name!r} is not listed" in err
    assert "is not a regular file" in err
    assert not (tmp_path / "evil.json").exists() and not (tmp_path / "work" / "B" / "results").exists()


def test_runs_of_other_config_are_refused_and_nothing_is_written(exported, prepared_data, tmp_path, capsys) -> None:
    _, archive = exported
    dst = machine(tmp_path / "C", prepared_data, "pretrain.epochs=3")  # another config: other fingerprints
    assert import_main([str(archive), "--params", str(dst)]) == 1
    err = capsys.readouterr().err
    assert err.count("this checkout expects") == 2 and "note: the archive was made with overrides" in err
    assert not (tmp_path / "C" / "results").exists()


def test_an_unfinished_run_is_refused_or_skipped_on_request(exported, prepared_data, tmp_path, capsys) -> None:
    _, archive = exported
    bad = repack(archive, tmp_path / "unfinished.tar.gz",
                 lambda files: rewrite(files, "vicreg/seed0", "status.json", lambda s: s.update(state="interrupted")))
    dst = machine(tmp_path / "B", prepared_data)
    assert import_main([str(bad), "--params", str(dst)]) == 1
    assert "run vicreg/seed0: not finished (state interrupted)" in capsys.readouterr().err
    assert not (tmp_path / "B" / "results").exists()
    assert import_main([str(bad), "--params", str(dst), "--skip-refused"]) == 0
    assert "warning: run vicreg/seed0: not finished" in capsys.readouterr().err
    assert runs_here(dst)["pixels/seed0"] == "done" and runs_here(dst)["vicreg/seed0"] == "missing"


def test_a_finished_run_here_is_never_replaced(exported, prepared_data, tmp_path, capsys) -> None:
    _, archive = exported
    dst = machine(tmp_path / "B", prepared_data)
    assert import_main([str(archive), "--params", str(dst)]) == 0
    runs = tmp_path / "B" / "results" / "runs"
    metrics = runs / "pixels" / "seed0" / "metrics.json"  # same fingerprint, other numbers: trained twice
    metrics.write_text(metrics.read_text().replace('"linear_top1": ', '"linear_top1": 1', 1))
    status = runs / "vicreg" / "seed0" / "status.json"  # finished under another fingerprint (other code)
    status.write_text(status.read_text().replace(json.loads(status.read_text())["fingerprint"], "0123456789abcdef"))
    kept = {p: p.read_bytes() for p in (metrics, status)}
    capsys.readouterr()
    assert import_main([str(archive), "--params", str(dst)]) == 1
    err = capsys.readouterr().err
    assert "holds a finished run of other config or code (fingerprint 0123456789abcdef)" in err
    assert import_main([str(archive), "--params", str(dst), "--skip-refused"]) == 0
    assert "run pixels/seed0: kept the result already here" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in kept} == kept


def test_dry_run_writes_nothing_and_usage_errors_exit_2(exported, prepared_data, tmp_path, capsys) -> None:
    _, archive = exported
    dst = machine(tmp_path / "B", prepared_data)
    assert import_main([str(archive), "--params", str(dst), "--dry-run"]) == 0
    assert "would import 2 runs" in capsys.readouterr().out and not (tmp_path / "B" / "results").exists()
    with pytest.raises(SystemExit) as exc:
        import_main([str(tmp_path / "none.tar.gz"), "--params", str(dst)])
    assert exc.value.code == 2
    assert export_main(["--profile", "nope", "--params", str(dst)]) == 2
    assert "valid" in capsys.readouterr().err  # an unknown name lists the valid ones
