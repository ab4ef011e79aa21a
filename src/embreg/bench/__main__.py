"""``python -m embreg.bench``."""

import sys

from embreg.bench.run import main

sys.exit(main())
