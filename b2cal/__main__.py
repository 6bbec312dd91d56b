"""``python -m b2cal`` is the ``b2cal`` command."""

import sys

from b2cal.cli import main

sys.exit(main())
