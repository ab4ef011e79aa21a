"""Where and how a run was made, recorded in its status.json beside its result: the machine (CPU
model, GPU, cores), the software (Python, torch and the BLAS / LAPACK it was built with), the
threads it used and the command that launched it. The analysis aggregates these per profile
(embreg.analysis.provenance: PROVENANCE.md), so the committed results say what made them.
Changes no number a run computes (plumbing for embreg.fingerprint)."""

from __future__ import annotations

import os
import platform
import re
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

COMMAND_ENV = "EMBREG_COMMAND"  # set by the sweep stage for its jobs: the command a person ran


@lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo; else the platform's processor string)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


@lru_cache(maxsize=1)
def blas() -> str:
    """The BLAS and LAPACK torch was built with, from ``torch.__config__.show()``."""
    import torch

    shown = torch.__config__.show()
    found = [f"{k}={v}" for k, v in re.findall(r"(BLAS_INFO|LAPACK_INFO)=([^\s,]+)", shown)]
    if "mkl" in shown.lower() and not any("mkl" in f for f in found):
        found.append("MKL")
    return ", ".join(dict.fromkeys(found)) or "unknown"


def machine(device: str, threads: int) -> dict[str, Any]:
    """The record a run keeps of what ran it (``device`` as the config names it)."""
    import torch

    gpu = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") and torch.cuda.is_available() else None
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "gpu": gpu, "threads": threads,
            "python": platform.python_version(), "torch": torch.__version__, "blas": blas(),
            "command": os.environ.get(COMMAND_ENV) or " ".join([Path(sys.orig_argv[0]).name, *sys.orig_argv[1:]])}
