"""``python -m dlm``: the same command line as the ``dlm`` console script."""

import sys

from dlm.cli import main

sys.exit(main())
