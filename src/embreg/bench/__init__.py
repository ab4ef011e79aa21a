"""`embreg bench` (``python -m embreg.bench``): speed benchmarks, outside the training core
(nothing in the library imports it). ``run`` orchestrates; ``timing``, ``terms``, ``training``
and ``report`` hold the measurements and BENCH.md."""

from embreg.bench.run import AGREEMENT_TOL, QUICK_SIZES, main, run_bench
from embreg.bench.training import gpu_setting

__all__ = ["AGREEMENT_TOL", "QUICK_SIZES", "gpu_setting", "main", "run_bench"]
