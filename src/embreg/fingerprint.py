"""What counts as training code, declared once, and its hash (torch-free).

A run's fingerprint is its config's science part plus ``code_hash()``: a run trained by other
training code is not reused. ``TRAINING_CODE`` lists the package's training core (every module
that changes what a run computes); the sweep stage in dvc.yaml depends on exactly these paths
plus ``PIPELINE_CODE`` (tests/test_layout.py checks both, and that every module of the package
is in one of them or in ``NOT_TRAINING_CODE``). Re-analysing, or moving a sweep to another
launcher, therefore needs no retraining.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent

# the training core: paths relative to src/embreg/, folders included whole
TRAINING_CODE: tuple[str, ...] = (
    "attempt.py",
    "checks.py",
    "config.py",
    "data",
    "distributed.py",
    "evaluate.py",
    "fingerprint.py",
    "io.py",
    "metrics.py",
    "models.py",
    "objective.py",
    "optim.py",
    "preemption.py",
    "pretrain.py",
    "registry.py",
    "regularizers.py",
    "run.py",
    "rundir.py",
    "steplog.py",
    "train.py",
)
# what the sweep stage runs besides the core: reading params.yaml, planning and launching
PIPELINE_CODE: tuple[str, ...] = ("params.py", "sweep")
# never changes a run's results and is no dependency of the sweep stage
NOT_TRAINING_CODE: tuple[str, ...] = ("analysis", "audit.py", "bench", "cli.py")


def training_files(package_dir: Path = PACKAGE_DIR) -> list[Path]:
    """The .py files under TRAINING_CODE, sorted (the hash's order)."""
    files: list[Path] = []
    for rel in TRAINING_CODE:
        path = package_dir / rel
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return sorted(files)


def code_hash(package_dir: Path = PACKAGE_DIR) -> str:
    """sha256 over the training core's file names and contents, 16 hex digits."""
    h = hashlib.sha256()
    for path in training_files(package_dir):
        h.update(str(path.relative_to(package_dir)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]
