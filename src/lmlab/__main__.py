"""``python -m lmlab`` (what ``torchrun ... -m lmlab train`` runs): the same as the ``lmlab`` command."""

import sys

from lmlab.cli import main

sys.exit(main())
