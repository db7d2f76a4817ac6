"""``python -m lmlab.cli``: the same as the ``lmlab`` command."""

import sys

from lmlab.cli import main

sys.exit(main())
