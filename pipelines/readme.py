"""Splice results/<profile>/README_results.md (written by the analyze stage) into README.md,
between its `<!-- results:begin -->` and `<!-- results:end -->` markers.

    python pipelines/readme.py [--profile default]
"""

from __future__ import annotations

import sys

from _common import fail
from embreg.analysis.readme import main

if __name__ == "__main__":
    sys.exit(fail(lambda: main(sys.argv[1:])))
