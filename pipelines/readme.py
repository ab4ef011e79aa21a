"""Splice results/<profile>/README_results.md (written by the analyze stage) into README.md."""

from __future__ import annotations

import sys

from embreg.analysis.readme import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
