"""Shared by the scripts a GPU machine without network runs (gpu_check.py, gpu_grid.py):
standard library only, since they start before embreg's dependencies are installed.

What they share: a JSON record rewritten atomically after every step (a step that fails or
runs out of time loses none of the others), commands run in their own process groups under a
time limit, the offline install of gpu_bundle/wheels, the environment the steps run in, and
one log archive. What such a machine returns is narrow (a few files, none nested, each of a
bounded size), so every output lands flat in the output folder and work files stay outside it.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "gpu_bundle"
# what embreg imports from the bundled wheels (Python 3.12 with torch, numpy, pandas, ... preinstalled)
IMPORTS = "import hydra, omegaconf, antlr4, submitit, tabulate, hydra_plugins.hydra_submitit_launcher"
# what one returned file may hold; a log archive keeps each log's last LOG_TAIL bytes
MAX_FILE_BYTES = 16 << 20
LOG_TAIL = 1 << 20


def description(doc: str) -> str:
    """A script's --help description: its docstring's first paragraph (argparse reflows it), without
    the ``::`` that introduces the usage block after it."""
    return doc.split("\n\n")[0].removesuffix("::")


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class Record:
    """A JSON document at ``path``, rewritten atomically after every step, and the time left
    of ``budget_s`` seconds counted from its creation."""

    def __init__(self, path: Path, budget_s: float, doc: dict[str, Any]) -> None:
        self.path, self.budget_s, self.t0 = path, budget_s, time.monotonic()
        self.doc: dict[str, Any] = {"started": now(), "finished": None, "budget_s": budget_s, **doc, "parts": {}}
        self.save()

    def save(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(self.doc, indent=2, default=str) + "\n")
        tmp.replace(self.path)

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def left(self) -> float:
        return self.budget_s - self.elapsed()

    def record(self, part: str, entry: dict[str, Any]) -> dict[str, Any]:
        self.doc["parts"][part] = entry
        self.save()
        return entry

    def finish(self) -> None:
        self.doc["finished"], self.doc["seconds"] = now(), round(self.elapsed(), 1)
        self.save()


def stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """TERM to the process's group, KILL after ``grace`` seconds: a step leaves nothing running."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait)
            return
        except (ProcessLookupError, subprocess.TimeoutExpired):
            if proc.poll() is not None:
                return


def start(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    """``cmd`` in the repository, in its own process group, its output (both streams) to ``log``."""
    with open(log, "w") as f:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)


def run_all(cmds: dict[str, list[str]], limit: float, logs: Path, env: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Start every command at once (output to logs/<name>.log), wait for all until ``limit``
    seconds, stop whatever is left; per command: returncode (None: stopped at the limit), its
    own wall seconds, the command and the end of its output."""
    t0, ended = time.monotonic(), {}
    procs = {name: start(cmd, logs / f"{name}.log", env) for name, cmd in cmds.items()}
    while len(ended) < len(procs) and time.monotonic() - t0 < limit:
        for name, proc in procs.items():
            if name not in ended and proc.poll() is not None:
                ended[name] = time.monotonic()
        time.sleep(0.1)
    res = {}
    for name, proc in procs.items():
        if name not in ended:
            stop(proc)
        text = (logs / f"{name}.log").read_text(errors="replace")
        res[name] = {"returncode": proc.returncode if name in ended else None,
                     "wall_s": round(ended.get(name, time.monotonic()) - t0, 2), "command": " ".join(cmds[name]),
                     "log": f"{name}.log", "tail": text[-1500:]}
    return res


def part(rec: Record, name: str, cmds: dict[str, list[str]], env: dict[str, str], limit: float,
         logs: Path) -> dict[str, Any]:
    """Run a step's commands under ``limit`` seconds and record it: ok (every command exited
    0), timeout (one was stopped at the limit) or failed."""
    t0 = time.monotonic()
    res = run_all(cmds, max(1.0, limit), logs, env)
    rcs = [r["returncode"] for r in res.values()]
    status = "timeout" if None in rcs else "ok" if all(rc == 0 for rc in rcs) else "failed"
    return rec.record(name, {"status": status, "limit_s": round(max(1.0, limit), 1),
                             "seconds": round(time.monotonic() - t0, 2), "commands": res})


def last_json(text: str) -> Any:
    """The last line of a command's output that parses as JSON, else None."""
    for line in reversed(text.strip().splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None


def output_json(entry: dict[str, Any], name: str, logs: Path) -> Any:
    return last_json((logs / entry["commands"][name]["log"]).read_text(errors="replace"))


def offline_env(site: str) -> dict[str, str]:
    """The environment of every step: this checkout's src/ and the installed wheels first."""
    path = [str(REPO / "src"), str(Path(site).resolve()), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": os.pathsep.join(path)}


def install(rec: Record, wheels_dir: str, site: str, imports: str, env: dict[str, str], limit: float,
            logs: Path) -> dict[str, Any]:
    """gpu_bundle/wheels -> ``site`` (``pip install --no-index --no-deps --target``; unzipped
    when pip fails: every bundled wheel is pure Python), then ``imports`` on the steps' path.
    Nothing is installed when ``imports`` already work (a machine with the project's venv)."""
    t0 = time.monotonic()
    probe = run_all({"imports_before": [sys.executable, "-c", imports]}, limit, logs, env)
    if probe["imports_before"]["returncode"] == 0:
        return rec.record("install", {"status": "ok", "installed_by": "nothing: already importable", "wheels": [],
                                      "seconds": round(time.monotonic() - t0, 2), "commands": probe})
    wheels = sorted(Path(wheels_dir).glob("*.whl"))
    if not wheels:
        return rec.record("install", {"status": "failed", "commands": probe,
                                      "error": f"no wheels under {wheels_dir} and {imports!r} fails: run `make gpu-wheels`"})
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--upgrade", "--target", site,
           *map(str, wheels)]
    entry = part(rec, "install", {"pip": pip}, env, limit - (time.monotonic() - t0), logs)
    entry["installed_by"] = "pip"
    if entry["status"] != "ok":
        for w in wheels:
            with zipfile.ZipFile(w) as z:
                z.extractall(site)
        entry["installed_by"] = "zipfile (pip failed)"
    after = run_all({"imports": [sys.executable, "-c", imports]}, max(5.0, limit - (time.monotonic() - t0)), logs, env)
    entry["commands"] |= probe | after
    entry["status"] = "ok" if after["imports"]["returncode"] == 0 else "failed"
    entry["wheels"], entry["seconds"] = [w.name for w in wheels], round(time.monotonic() - t0, 2)
    return rec.record("install", entry)


def pack_logs(dest: Path, sources: list[tuple[Path, str, str]], since: float = 0.0) -> dict[str, Any]:
    """One .tar.gz at ``dest`` (written atomically) of each source ``(folder or file, prefix,
    glob pattern)``: every file matching the pattern under the folder (or the file itself)
    modified at or after ``since`` (a time.time()), stored as ``<prefix>/<its path below the
    folder>``, each cut to its last LOG_TAIL bytes and the archive kept under MAX_FILE_BYTES
    (files past it are named in ``left_out``)."""
    files = []
    for src, prefix, pattern in sources:
        found = [src] if src.is_file() else sorted(p for p in src.rglob(pattern) if p.is_file()) if src.is_dir() else []
        files += [(p, f"{prefix}/{p.relative_to(src)}" if p != src else prefix) for p in found
                  if p.stat().st_mtime >= since]
    tmp, packed, left_out, total = dest.with_name(f".{dest.name}.tmp"), [], [], 0
    with tarfile.open(tmp, "w:gz") as tar:
        for path, name in files:
            data = path.read_bytes()[-LOG_TAIL:]
            if total + len(data) > MAX_FILE_BYTES // 2:  # gzip rarely grows text; half leaves a wide margin
                left_out.append(name)
                continue
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), int(path.stat().st_mtime)
            tar.addfile(info, io.BytesIO(data))
            packed.append(name)
            total += len(data)
    tmp.replace(dest)
    return {"path": dest.name, "files": len(packed), "bytes": dest.stat().st_size, "left_out": left_out}


def outputs(out: Path) -> dict[str, int]:
    """The files in the output folder and their sizes (what comes back: flat, bounded)."""
    return {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.is_file() and not p.name.startswith(".")}
