"""`python -m saekit` is the same as the `saekit` console script."""

import sys

from saekit.cli import main

sys.exit(main())
