"""The GPU check: one call on a GPU machine without network (``make gpu-check``, or
``python3 pipelines/gpu_check.py --out DIR`` from the repository root, after ``make gpu-wheels``
here has filled gpu_bundle/). Standard library only: it runs before embreg's dependencies are
installed. When GPU time is short, run pipelines/gpu_grid.py first (the grid is the answer) and
this check second (speed figures), only if five minutes are left.

It writes exactly three files into DIR, none nested: ``gpu_check.json`` (every part), the
bench's ``gpu_bench.json`` and ``gpu_check-logs.tar.gz`` (every part's output); work files stay
in ``--work``. Parts, in order, each under its own time limit (``--limit PART=SECONDS``) and all
within ``--budget-s`` (default 285 s: the check fits five minutes); the JSON and the log archive
are rewritten after every part, so a part that fails or runs out of time loses none of the others:

1. ``install``: gpu_bundle/wheels -> gpu_bundle/site (``pip install --no-index --no-deps
   --target``; nothing when embreg's imports already work), then those imports;
2. ``environment``: Python, torch, CUDA, the device, ``nvidia-smi``;
3. ``prepare``: Fashion-MNIST from gpu_bundle/fashion-mnist (the prepare stage's code);
4. ``tests``: ``pytest -m gpu`` (counts from its junit XML); failed when no test ran or every
   test was skipped (no CUDA device: nothing was checked);
5. ``bench``: ``python -m embreg.bench --gpu-only`` (its targets, written part by part);
6. ``runs``: the profile's arms x seed 0 for one epoch, all at once on the GPU (each with its
   share of the cores), their pretraining / evaluation seconds, seconds per step and linear
   top-1, and the whole grid's time extrapolated from them (``pipelines/gpu_runs.py grid``).

Exit status 0 when every part is ok, 1 otherwise. ``--cpu-smoke`` runs the same orchestration
on a CPU with tiny sizes and the smoke profile (tests).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path

from _offline import (
    BUNDLE,
    IMPORTS,
    REPO,
    Record,
    description,
    install,
    last_json,
    offline_env,
    output_json,
    pack_logs,
    part,
    run_all,
)

LIMITS = {"install": 25, "environment": 15, "prepare": 25, "tests": 50, "bench": 75, "runs": 90}
SUMMARY_S = 15  # kept after the runs for their summary and the grid's estimate
JSON, BENCH, LOGS = "gpu_check.json", "gpu_bench.json", "gpu_check-logs.tar.gz"
ENV_PROBE = ("import json, os, sys, torch; c = torch.cuda.is_available(); print(json.dumps({'python': sys.version, "
             "'torch': torch.__version__, 'cuda': torch.version.cuda, 'cuda_available': c, 'device': "
             "torch.cuda.get_device_name() if c else None, 'capability': torch.cuda.get_device_capability() if c "
             "else None, 'cpus': os.cpu_count(), 'torch_threads': torch.get_num_threads()}))")


def junit_counts(path: Path) -> dict[str, int] | None:
    if not path.is_file():
        return None
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return counts


def tests_verdict(returncode: int | None, counts: dict[str, int] | None) -> tuple[str, str | None]:
    """The tests part's status and why: a run where nothing was tested is no pass."""
    if returncode is None:
        return "timeout", None
    if returncode == 5 or not counts or counts["tests"] == 0:
        return "failed", "no test was collected"
    if counts["passed"] == 0 and counts["skipped"] == counts["tests"]:
        return "failed", f"every test was skipped ({counts['skipped']}): no CUDA device, nothing was checked"
    return ("ok" if returncode == 0 else "failed"), None


def nvidia_smi() -> str:
    try:
        return subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=15).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"nvidia-smi: {type(exc).__name__}: {exc}"


def runs(rec: Record, a: argparse.Namespace, env: dict[str, str]) -> None:
    """The profile's arms at once for one epoch, then their summary and the grid's estimate."""
    base = a.work / "runs"
    ckpt = tempfile.mkdtemp(prefix="gpu_check_ckpt_")  # checkpoints are never packed
    threads = max(1, len(os.sched_getaffinity(0)) // len(a.arms))  # each run its share of the cores
    cmds = {f"run_{arm}": [sys.executable, "-m", "embreg.train", f"profile={a.profile}", f"objective={arm}", "seed=0",
                           "pretrain.epochs=1", f"runtime.threads={threads}", "runtime.progress=false",
                           f"paths.data={a.data}", f"paths.results={base}/results", f"paths.checkpoints={ckpt}",
                           f"hydra.run.dir={base}/hydra/{arm}", *a.run_overrides] for arm in a.arms}
    entry = part(rec, "runs", cmds, env, min(a.limits["runs"], rec.left() - SUMMARY_S), a.logs)
    shutil.rmtree(ckpt, ignore_errors=True)
    entry["threads_per_run"] = threads
    walls = {arm: entry["commands"][f"run_{arm}"]["wall_s"] for arm in a.arms}
    helper = [sys.executable, str(REPO / "pipelines" / "gpu_runs.py")]
    summary = run_all({"summarize": [*helper, "summarize", "--results", f"{base}/results", "--walls", json.dumps(walls)]},
                      max(5.0, min(10.0, rec.left())), a.logs, env)
    entry["runs"] = last_json((a.logs / "summarize.log").read_text(errors="replace")) or summary["summarize"]
    done = [r for r in entry["runs"] if r.get("state") == "done"] if isinstance(entry["runs"], list) else []
    entry["grid"] = "no run finished: nothing to extrapolate from"
    if done:
        rows = base / "runs.json"
        rows.write_text(json.dumps(done))
        grid = run_all({"grid": [*helper, "grid", "--profile", a.profile, "--data", a.data, "--runs", str(rows),
                                 "--concurrency", str(len(a.arms))]}, max(5.0, rec.left()), a.logs, env)
        entry["grid"] = last_json((a.logs / "grid.log").read_text(errors="replace")) or grid["grid"]
    rec.record("runs", entry)


def bench(rec: Record, a: argparse.Namespace, env: dict[str, str]) -> None:
    """The bench's GPU part; its bench.json, copied flat beside the check's JSON."""
    work = a.work / "bench"
    cmd = [sys.executable, "-m", "embreg.bench", "--gpu-only", "--out", str(work), *a.bench_args]
    entry = part(rec, "bench", {"bench": cmd}, env, min(a.limits["bench"], rec.left() - SUMMARY_S), a.logs)
    saved = work / "bench.json"
    res = json.loads(saved.read_text()) if saved.is_file() else {}
    if res:
        tmp = a.out / f".{BENCH}.tmp"
        shutil.copyfile(saved, tmp)
        tmp.replace(a.out / BENCH)
    rec.record("bench", {**entry, "targets": res.get("targets"), "result": BENCH if res else None})


def run_part(rec: Record, name: str, a: argparse.Namespace, env: dict[str, str]) -> None:
    py, limit = sys.executable, min(a.limits[name], rec.left() - SUMMARY_S)
    if name == "install":
        install(rec, a.wheels, a.site, a.imports, env, limit, a.logs)
    elif name == "environment":
        entry = part(rec, name, {"probe": [py, "-c", ENV_PROBE]}, env, limit, a.logs)
        rec.record(name, {**entry, "torch": output_json(entry, "probe", a.logs), "nvidia_smi": nvidia_smi()})
    elif name == "prepare":
        cmd = [py, str(REPO / "pipelines" / "gpu_runs.py"), "prepare", "--profile", a.profile, "--mirror", a.mirror,
               "--data", a.data]
        entry = part(rec, name, {"prepare": cmd}, env, limit, a.logs)
        rec.record(name, {**entry, "card": output_json(entry, "prepare", a.logs)})
    elif name == "tests":
        xml = a.logs / "gpu_tests.xml"
        entry = part(rec, name, {"pytest": [py, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
                                            f"--junitxml={xml}", *a.pytest_args]}, env, limit, a.logs)
        counts = junit_counts(xml)
        status, why = tests_verdict(entry["commands"]["pytest"]["returncode"], counts)
        rec.record(name, {**entry, "status": status, "counts": counts, **({"why": why} if why else {})})
    elif name == "bench":
        bench(rec, a, env)
    elif name == "runs":
        runs(rec, a, env)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="gpu_check.py", description=description(__doc__))
    ap.add_argument("--out", type=Path, default=BUNDLE / "out", help="where its three files go (default: %(default)s)")
    ap.add_argument("--work", type=Path, default=BUNDLE / "work" / "check", help="logs, bench and run folders")
    ap.add_argument("--budget-s", type=float, default=285.0, help="all parts together (default: %(default)s)")
    ap.add_argument("--limit", action="append", default=[], metavar="PART=SECONDS", help=f"defaults: {LIMITS}")
    ap.add_argument("--parts", nargs="+", default=list(LIMITS), choices=list(LIMITS))
    ap.add_argument("--wheels", default=str(BUNDLE / "wheels"))
    ap.add_argument("--site", default=str(BUNDLE / "site"))
    ap.add_argument("--mirror", default=str(BUNDLE / "fashion-mnist"))
    ap.add_argument("--data", default=str(REPO / "data"))
    ap.add_argument("--profile", default="fmnist_gpu")
    ap.add_argument("--arms", nargs="+", default=["vicreg", "svmax"])
    ap.add_argument("--run-overrides", nargs="*", default=[], help="extra overrides for every run")
    ap.add_argument("--pytest-args", nargs="*", default=["tests"])
    ap.add_argument("--bench-args", nargs="*", default=["--repeats", "2"])
    ap.add_argument("--imports", default=IMPORTS, help="what `install` checks imports after installing")
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="the same orchestration on a CPU: smoke profile, tiny bench, no GPU needed")
    a = ap.parse_args(argv)
    if a.cpu_smoke:
        a.profile = "smoke" if a.profile == "fmnist_gpu" else a.profile
        a.bench_args = ["--quick", "--device", "cpu", "--threads", "1"]  # one repeat, tiny sizes
    a.limits = {**LIMITS, **{k: float(v) for k, v in (x.split("=", 1) for x in a.limit)}}
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    a.out, a.work = a.out.resolve(), a.work.resolve()
    a.logs = a.work / "logs"
    for old in ("logs", "runs", "bench"):  # this call's files only
        shutil.rmtree(a.work / old, ignore_errors=True)
    for d in (a.out, a.logs):
        d.mkdir(parents=True, exist_ok=True)
    rec = Record(a.out / JSON, a.budget_s, {"mode": "cpu-smoke" if a.cpu_smoke else "gpu", "limits_s": a.limits})
    env = offline_env(a.site)
    for name in a.parts:
        try:
            run_part(rec, name, a, env)
        except Exception as exc:  # noqa: BLE001 - the orchestrator's own error: recorded, the next part runs
            rec.record(name, {"status": "error", "error": f"{type(exc).__name__}: {exc}",
                              "traceback": traceback.format_exc()[-3000:]})
        rec.doc["logs"] = pack_logs(a.out / LOGS, [(a.logs, "logs", "*"), (a.work / "runs", "runs", "*"),
                                                     (a.work / "bench", "bench", "*")])
        rec.save()
    rec.finish()
    statuses = {k: v.get("status") for k, v in rec.doc["parts"].items()}
    print(json.dumps(statuses))
    return 0 if all(s == "ok" for s in statuses.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
