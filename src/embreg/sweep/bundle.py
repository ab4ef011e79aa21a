"""The results archive: one file that carries a profile's finished runs between machines
(``embreg export`` writes it, ``embreg import`` verifies and merges it; embreg.sweep.export and
embreg.sweep.merge). Torch-free.

Layout, a .tar.gz holding regular files only::

    embreg-export.json              the manifest
    runs/<run id>/seed<k>/<file>    each exported run's RUN_FILES that exist (never a checkpoint)

The manifest: ``format``, ``profile``, ``created``, ``git_revision`` and ``code_hash`` of the
exporting checkout, ``overrides`` (params.yaml's), ``runs`` (one entry per run: ``run_id``,
``seed``, ``fingerprint``, ``state``, ``files``: name -> sha256 of its bytes) and
``not_exported`` ("<run id>/seed<k>" -> its state there, and its checkpoint's size when it has one).

Reading never extracts: members are read into memory, checked against the manifest (names,
types, sizes, hashes), and only then written, by embreg.sweep.merge, under paths it builds from
this checkout's plan. So nothing in an archive can name where it lands.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import re
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embreg.config import RunConfig
from embreg.fingerprint import code_hash, run_fingerprint
from embreg.io import atomic_write
from embreg.rundir import Observed, observe

FORMAT = 1
MANIFEST = "embreg-export.json"
# what a finished run directory holds besides its checkpoint (which lives elsewhere: paths.checkpoints)
RUN_FILES = ("status.json", "metrics.json", "config.yaml", "history.json", "spectra.json")
REQUIRED = ("status.json", "metrics.json")  # the raw-pixel reference has no history or spectra
MAX_FILE = 64 << 20  # a run's file is kilobytes; this bounds what a broken archive can make us read
MAX_TOTAL = 1 << 30
_RUN_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_@=.+-]*$")  # an arm, then @key=value per swept key


class ArchiveError(ValueError):
    """An archive that cannot be read or does not match its manifest: one line per problem."""


@functools.lru_cache(maxsize=1)
def _code() -> str:
    return code_hash()


def expected_fingerprint(cfg: RunConfig) -> str:
    """The fingerprint a finished run of ``cfg`` must carry to count as finished in this
    checkout. Every export and import question about fingerprints goes through here and
    ``state_here``."""
    return run_fingerprint(cfg)


def state_here(cfg: RunConfig) -> Observed:
    """The run as its directory shows it in this checkout (embreg.rundir.observe: a run whose
    process is gone is interrupted, one finished under another fingerprint stale, ...)."""
    return observe(cfg)


def checkout_code() -> str:
    """The training code's hash in this checkout (recorded in the manifest, compared on import)."""
    return _code()


def run_key(run_id: str, seed: int) -> str:
    """``"<run id>/seed<k>"``: a run's name in messages and in the manifest's ``not_exported``."""
    return f"{run_id}/seed{seed}"


def member(run_id: str, seed: int, name: str) -> str:
    """The archive member of a run's file."""
    return f"runs/{run_key(run_id, seed)}/{name}"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def strict_loads(data: bytes) -> Any:
    """JSON from bytes, NaN and infinities refused (as embreg.attempt.strict_json reads a file)."""
    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    return json.loads(data, parse_constant=refuse)


@dataclass
class RunFiles:
    """One exported run: its id, seed and fingerprint as the manifest states them, and the
    bytes of its files (name -> bytes), each checked against the manifest's sha256."""

    run_id: str
    seed: int
    fingerprint: str
    state: str
    digests: dict[str, str] = field(default_factory=dict)  # name -> sha256, as the manifest lists them
    files: dict[str, bytes] = field(default_factory=dict)  # name -> bytes, once checked

    @property
    def key(self) -> str:
        return run_key(self.run_id, self.seed)


@dataclass
class Archive:
    manifest: dict[str, Any]
    runs: list[RunFiles]

    @property
    def profile(self) -> str:
        return str(self.manifest["profile"])


def write_archive(path: Path, manifest: dict[str, Any], runs: list[RunFiles]) -> int:
    """Write the archive atomically (a reader never sees half of one); returns its size in bytes."""
    def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
        tar.addfile(info, io.BytesIO(data))

    def write(f: Any) -> None:
        with tarfile.open(fileobj=f, mode="w:gz") as tar:
            add(tar, MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
            for run in runs:
                for name, data in run.files.items():
                    add(tar, member(run.run_id, run.seed, name), data)

    atomic_write(path, write)
    os.chmod(path, 0o644)  # a temporary file's 0600 would keep it from whoever merges it
    return path.stat().st_size


def _well_formed(e: Any) -> bool:
    """A manifest run entry with a safe run id (no ``/``, no ``..``), a seed, a fingerprint and
    sha256s for the required files among RUN_FILES."""
    return (isinstance(e, dict) and isinstance(e.get("run_id"), str) and bool(_RUN_ID.match(e["run_id"]))
            and type(e.get("seed")) is int and e["seed"] >= 0 and isinstance(e.get("fingerprint"), str)
            and isinstance(e.get("files"), dict) and set(e["files"]) <= set(RUN_FILES)
            and set(REQUIRED) <= set(e["files"]) and all(isinstance(v, str) for v in e["files"].values()))


def _manifest_runs(manifest: Any) -> tuple[list[RunFiles], list[str]]:
    """The manifest's run entries (without bytes yet) and one line per malformed one."""
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(manifest.get("profile"), str):
        return [], [f"{MANIFEST} is not an embreg export manifest of format {FORMAT}"]
    runs, bad = [], []
    for i, e in enumerate(manifest.get("runs") or []):
        if not _well_formed(e):
            bad.append(f"{MANIFEST}: run entry {i} is malformed (run_id, seed, fingerprint, files with "
                       f"{' and '.join(REQUIRED)} among {', '.join(RUN_FILES)})")
            continue
        runs.append(RunFiles(e["run_id"], e["seed"], e["fingerprint"], str(e.get("state")), dict(e["files"])))
    keys = [r.key for r in runs]
    bad += [f"{MANIFEST}: run {k} is listed twice" for k in sorted({k for k in keys if keys.count(k) > 1})]
    return runs, bad


def _members(tar: tarfile.TarFile) -> tuple[dict[str, bytes], list[str]]:
    """Every regular file's bytes by name; one line per member that is neither a regular file
    nor a directory (links, devices), oversized, or named twice. Nothing is extracted."""
    data, bad, total = {}, [], 0
    for m in tar:
        if m.isdir():
            continue  # nothing is extracted: a directory entry creates nothing
        if not m.isfile():
            bad.append(f"member {m.name!r} is not a regular file (a link or device): refused")
        elif m.size > MAX_FILE or total + m.size > MAX_TOTAL:
            bad.append(f"member {m.name!r} is {m.size} bytes, more than a run's file can be: refused")
        elif m.name in data:
            bad.append(f"member {m.name!r} appears twice")
        else:
            total += m.size
            data[m.name] = tar.extractfile(m).read()  # type: ignore[union-attr]
    return data, bad


def read_archive(path: Path) -> Archive:
    """The archive at ``path``, every file checked against the manifest: members other than the
    manifest and the files it lists (a path outside ``runs/``, ``..``), a missing file, or a
    file whose sha256 differs raise ArchiveError (one line per problem)."""
    try:
        with tarfile.open(path, "r:*") as tar:
            data, bad = _members(tar)
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise ArchiveError(f"{path} is not a readable archive ({type(exc).__name__}: {exc}); "
                           "make one with `embreg export`") from None
    if MANIFEST not in data:
        raise ArchiveError("\n".join([*bad, f"{path} has no {MANIFEST}: not an `embreg export` archive"]))
    try:
        manifest = json.loads(data.pop(MANIFEST))
    except ValueError as exc:
        raise ArchiveError(f"{path}: {MANIFEST} is not valid JSON ({exc})") from None
    runs, bad_runs = _manifest_runs(manifest)
    bad += bad_runs
    listed = {member(r.run_id, r.seed, name): (r, name, digest) for r in runs for name, digest in r.digests.items()}
    for name in sorted(set(data) - set(listed)):
        bad.append(f"member {name!r} is not listed in {MANIFEST}: refused (an archive holds "
                   f"{MANIFEST} and runs/<run id>/seed<k>/<file> only)")
    for name, (run, fname, digest) in listed.items():
        if name not in data:
            bad.append(f"run {run.key}: {fname} is listed but missing from the archive")
        elif sha256(data[name]) != digest:
            bad.append(f"run {run.key}: {fname} does not match its sha256 in {MANIFEST} (altered or corrupt)")
        else:
            run.files[fname] = data[name]
    if bad:
        raise ArchiveError("\n".join(bad))
    return Archive(manifest, runs)

