"""`embreg bench` (``python -m embreg.bench``): speed benchmarks, outside the training core
(nothing in the library imports it). ``run`` orchestrates; ``steps`` builds the two steps every
part times (the library's, the bare reference); ``timing``, ``terms``, ``training``, ``mfu``,
``gpu`` and ``svmax_gpu`` hold the measurements, ``targets`` the targets and ``report`` BENCH.md."""

from embreg.bench.gpu import gpu_setting
from embreg.bench.run import main, run_bench
from embreg.bench.targets import AGREEMENT_TOL
from embreg.bench.terms import QUICK_SIZES

__all__ = ["AGREEMENT_TOL", "QUICK_SIZES", "gpu_setting", "main", "run_bench"]
