"""``python -m detkd ...`` is the same as the ``detkd`` command."""

import sys

from detkd.cli import main

sys.exit(main())
