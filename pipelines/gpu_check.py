"""The GPU check: one call on a GPU machine without network (``make gpu-check``, or
``python3 pipelines/gpu_check.py --out "$OUT/gpu_check.json"`` from the repository root, after
``make gpu-wheels`` here has filled gpu_bundle/). Standard library only: it runs before embreg's
dependencies are installed.

Parts, in order, each under its own time limit (``--limit PART=SECONDS``) and all within
``--budget-s``; the JSON is rewritten after every part, so a part that fails or runs out of
time loses none of the others (each part's output is in ``<out dir>/gpu_check_logs/``):

1. ``install``: gpu_bundle/wheels -> gpu_bundle/site (``pip install --no-index --no-deps
   --target``), then the imports embreg needs; PYTHONPATH = src + that site for what follows;
2. ``environment``: Python, torch, CUDA, the device, ``nvidia-smi``;
3. ``prepare``: Fashion-MNIST from gpu_bundle/fashion-mnist (the prepare stage's code);
4. ``tests``: ``pytest -m gpu`` (counts from its junit XML);
5. ``bench``: ``python -m embreg.bench --gpu-only`` (its targets, written part by part);
6. ``runs``: the profile's arms x seed 0 for one epoch, all at once on the GPU (each with its
   share of the cores), their pretraining / evaluation seconds, seconds per step and linear
   top-1, and the whole grid's time extrapolated from them (``pipelines/gpu_runs.py grid``).

``--cpu-smoke`` runs the same orchestration on a CPU with tiny sizes and the smoke profile (tests).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "gpu_bundle"
LIMITS = {"install": 45, "environment": 20, "prepare": 45, "tests": 90, "bench": 140, "runs": 150}
IMPORTS = "import hydra, omegaconf, antlr4, submitit, tabulate, hydra_plugins.hydra_submitit_launcher"
ENV_PROBE = ("import json, os, sys, torch; c = torch.cuda.is_available(); print(json.dumps({'python': sys.version, "
             "'torch': torch.__version__, 'cuda': torch.version.cuda, 'cuda_available': c, 'device': "
             "torch.cuda.get_device_name() if c else None, 'capability': torch.cuda.get_device_capability() if c "
             "else None, 'cpus': os.cpu_count(), 'torch_threads': torch.get_num_threads()}))")


class Check:
    """The JSON being built, rewritten (atomically) after every part, and the time left."""

    def __init__(self, out: Path, budget_s: float, mode: str, limits: dict[str, float]) -> None:
        self.out, self.logs, self.limits = out, out.parent / "gpu_check_logs", limits
        self.logs.mkdir(parents=True, exist_ok=True)
        self.t0, self.budget_s = time.monotonic(), budget_s
        self.doc: dict[str, Any] = {"started": now(), "finished": None, "mode": mode, "budget_s": budget_s,
                                    "limits_s": limits, "parts": {}}
        self.save()

    def save(self) -> None:
        tmp = self.out.with_name(f".{self.out.name}.tmp")
        tmp.write_text(json.dumps(self.doc, indent=2, default=str) + "\n")
        tmp.replace(self.out)

    def limit(self, part: str) -> float:
        return max(1.0, min(self.limits[part], self.budget_s - (time.monotonic() - self.t0)))

    def record(self, part: str, entry: dict[str, Any]) -> dict[str, Any]:
        self.doc["parts"][part] = entry
        self.save()
        return entry


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _stop(proc: subprocess.Popen) -> None:
    """TERM to the process's group, KILL after 10 s: a part leaves nothing running."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait)
            return
        except (ProcessLookupError, subprocess.TimeoutExpired):
            if proc.poll() is not None:
                return


def run_all(cmds: dict[str, list[str]], limit: float, logs: Path, env: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Start every command at once (each in its own process group, output to logs/<name>.log),
    wait for all until ``limit`` seconds, stop whatever is left; per command: returncode
    (None: stopped at the limit), its own wall seconds, the end of its output."""
    t0, procs, ended = time.monotonic(), {}, {}
    for name, cmd in cmds.items():
        log = open(logs / f"{name}.log", "w")  # noqa: SIM115 - closed below, after the process
        procs[name] = (subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True), log)
    while len(ended) < len(procs) and time.monotonic() - t0 < limit:
        for name, (proc, _) in procs.items():
            if name not in ended and proc.poll() is not None:
                ended[name] = time.monotonic()
        time.sleep(0.1)
    res = {}
    for name, (proc, log) in procs.items():
        if name not in ended:
            _stop(proc)
        log.close()
        text = (logs / f"{name}.log").read_text(errors="replace")
        res[name] = {"returncode": proc.returncode if name in ended else None,
                     "wall_s": round(ended.get(name, time.monotonic()) - t0, 2), "command": " ".join(cmds[name]),
                     "log": str(logs / f"{name}.log"), "tail": text[-1500:]}
    return res


def part(check: Check, name: str, cmds: dict[str, list[str]], env: dict[str, str]) -> dict[str, Any]:
    """Run a part's commands under its limit and record it: ok (every command exited 0),
    timeout (one was stopped at the limit) or failed."""
    limit, t0 = check.limit(name), time.monotonic()
    res = run_all(cmds, limit, check.logs, env)
    rcs = [r["returncode"] for r in res.values()]
    status = "timeout" if None in rcs else "ok" if all(rc == 0 for rc in rcs) else "failed"
    entry = {"status": status, "limit_s": round(limit, 1), "seconds": round(time.monotonic() - t0, 2), "commands": res}
    return check.record(name, entry)


def last_json(text: str) -> Any:
    """The last line of a command's output that parses as JSON, else None."""
    for line in reversed(text.strip().splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None


def junit_counts(path: Path) -> dict[str, int] | None:
    import xml.etree.ElementTree as ET

    if not path.is_file():
        return None
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return counts


def nvidia_smi() -> str:
    try:
        return subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=15).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"nvidia-smi: {type(exc).__name__}: {exc}"


def output_json(entry: dict[str, Any], name: str) -> Any:
    return last_json(Path(entry["commands"][name]["log"]).read_text(errors="replace"))


def unzip_wheels(wheels: list[Path], site: str) -> None:
    """Pure-Python wheels are zip archives laid out as installed: the fallback when pip fails."""
    for w in wheels:
        with zipfile.ZipFile(w) as z:
            z.extractall(site)


def install(check: Check, a: argparse.Namespace, env: dict[str, str]) -> None:
    wheels = sorted(Path(a.wheels).glob("*.whl"))
    if not wheels:
        check.record("install", {"status": "failed", "error": f"no wheels under {a.wheels}: run `make gpu-wheels`"})
        return
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--upgrade", "--target", a.site,
           *map(str, wheels)]
    entry = part(check, "install", {"pip": pip}, env)
    entry["installed_by"] = "pip"
    if entry["status"] != "ok":  # no pip, or it refused: every wheel here is pure Python
        unzip_wheels(wheels, a.site)
        entry["installed_by"] = "zipfile (pip failed)"
    imports = run_all({"imports": [sys.executable, "-c", a.imports]}, check.limit("install"), check.logs, env)
    entry["commands"] |= imports  # what embreg imports from them, on the PYTHONPATH that follows
    entry["status"] = "ok" if imports["imports"]["returncode"] == 0 else "failed"
    entry["wheels"] = [w.name for w in wheels]
    check.record("install", entry)


def runs(check: Check, a: argparse.Namespace, env: dict[str, str]) -> None:
    """The profile's arms at once for one epoch, then their summary and the grid's estimate."""
    base = Path(check.out.parent / "gpu_check_runs")
    ckpt = tempfile.mkdtemp(prefix="gpu_check_ckpt_")  # checkpoints stay out of the returned folder
    threads = max(1, len(os.sched_getaffinity(0)) // len(a.arms))  # each run its share of the cores
    cmds = {f"run_{arm}": [sys.executable, "-m", "embreg.train", f"profile={a.profile}", f"objective={arm}", "seed=0",
                           "pretrain.epochs=1", f"runtime.threads={threads}", "runtime.progress=false",
                           f"paths.data={a.data}", f"paths.results={base}/results", f"paths.checkpoints={ckpt}",
                           f"hydra.run.dir={base}/hydra/{arm}", *a.run_overrides] for arm in a.arms}
    entry = part(check, "runs", cmds, env)
    shutil.rmtree(ckpt, ignore_errors=True)
    entry["threads_per_run"] = threads
    walls = {arm: entry["commands"][f"run_{arm}"]["wall_s"] for arm in a.arms}
    helper = [sys.executable, str(REPO / "pipelines" / "gpu_runs.py")]
    left = max(20.0, a.budget_s - (time.monotonic() - check.t0))  # the runs' summary: 20 s past the budget at most
    summary = run_all({"summarize": [*helper, "summarize", "--results", f"{base}/results", "--walls", json.dumps(walls)]},
                      min(30.0, left), check.logs, env)
    entry["runs"] = last_json(Path(summary["summarize"]["log"]).read_text(errors="replace")) or summary["summarize"]
    done = [r for r in entry["runs"] if r.get("state") == "done"] if isinstance(entry["runs"], list) else []
    entry["grid"] = "no run finished: nothing to extrapolate from"
    if done:
        rows = base / "runs.json"
        rows.write_text(json.dumps(done))
        grid = run_all({"grid": [*helper, "grid", "--profile", a.profile, "--data", a.data, "--runs", str(rows),
                                 "--concurrency", str(len(a.arms))]}, min(60.0, left), check.logs, env)
        entry["grid"] = last_json(Path(grid["grid"]["log"]).read_text(errors="replace")) or grid["grid"]
    check.record("runs", entry)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="gpu_check.py", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or BUNDLE / "out") / "gpu_check.json")
    ap.add_argument("--budget-s", type=float, default=420.0,
                    help="all parts together (default 420 s: with the runs' summary, within an 8-minute call)")
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
    ap.add_argument("--bench-args", nargs="*", default=["--repeats", "3"])
    ap.add_argument("--imports", default=IMPORTS, help="what `install` checks imports after installing")
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="the same orchestration on a CPU: smoke profile, tiny bench, no GPU needed")
    a = ap.parse_args(argv)
    if a.cpu_smoke:
        a.profile = "smoke" if a.profile == "fmnist_gpu" else a.profile
        a.bench_args = ["--quick", "--device", "cpu", "--threads", "1"]  # one repeat, tiny sizes
    a.limits = {**LIMITS, **{k: float(v) for k, v in (x.split("=", 1) for x in a.limit)}}
    return a


def run_part(check: Check, name: str, a: argparse.Namespace, env: dict[str, str]) -> None:
    py = sys.executable
    if name == "install":
        install(check, a, env)
    elif name == "environment":
        entry = part(check, "environment", {"probe": [py, "-c", ENV_PROBE]}, env)
        check.record("environment", {**entry, "torch": output_json(entry, "probe"), "nvidia_smi": nvidia_smi()})
    elif name == "prepare":
        entry = part(check, "prepare", {"prepare": [py, str(REPO / "pipelines" / "gpu_runs.py"), "prepare",
                                                    "--profile", a.profile, "--mirror", a.mirror, "--data", a.data]}, env)
        check.record("prepare", {**entry, "card": output_json(entry, "prepare")})
    elif name == "tests":
        xml = check.logs / "gpu_tests.xml"
        entry = part(check, "tests", {"pytest": [py, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
                                                 f"--junitxml={xml}", *a.pytest_args]}, env)
        rc = entry["commands"]["pytest"]["returncode"]
        check.record("tests", {**entry, "status": "no tests" if rc == 5 else entry["status"], "counts": junit_counts(xml)})
    elif name == "bench":
        out = check.out.parent / "bench"
        entry = part(check, "bench", {"bench": [py, "-m", "embreg.bench", "--gpu-only", "--out", str(out),
                                                *a.bench_args]}, env)
        saved = out / "bench.json"
        res = json.loads(saved.read_text()) if saved.is_file() else {}
        check.record("bench", {**entry, "targets": res.get("targets"), "result": str(saved) if res else None})
    elif name == "runs":
        runs(check, a, env)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    a.out = a.out.resolve()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    check = Check(a.out, a.budget_s, "cpu-smoke" if a.cpu_smoke else "gpu", a.limits)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(Path(a.site).resolve()),
                                          *filter(None, [os.environ.get("PYTHONPATH")])])}
    for name in a.parts:
        try:
            run_part(check, name, a, env)
        except Exception as exc:  # noqa: BLE001 - the orchestrator's own error: recorded, the next part runs
            check.record(name, {"status": "error", "error": f"{type(exc).__name__}: {exc}",
                                "traceback": traceback.format_exc()[-3000:]})
    check.doc["finished"] = now()
    check.doc["seconds"] = round(time.monotonic() - check.t0, 1)
    check.save()
    print(json.dumps({k: v.get("status") for k, v in check.doc["parts"].items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
