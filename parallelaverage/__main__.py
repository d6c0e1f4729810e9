"""``python -m parallelaverage``: the ``parallelaverage`` command (see ``parallelaverage.cli``)."""

import sys

from parallelaverage.cli import main

sys.exit(main())
