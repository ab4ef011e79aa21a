"""Write the generated blocks of the docs (and the README), each between its markers.

    python pipelines/readme.py [--profile default] [--into PAGE]   # results/<profile>/README_results.md
                                                                    # -> docs/results/<profile>.md
    python pipelines/readme.py --docs   # docs/terms.md, docs/profiles.md, docs/slurm.md: from the registry and conf/
    python pipelines/readme.py --all    # both, for every profile with a page and an analysis
"""

from __future__ import annotations

import sys

from _common import fail
from embreg.analysis.readme import main

if __name__ == "__main__":
    sys.exit(fail(lambda: main(sys.argv[1:])))
