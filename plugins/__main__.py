"""``python -m circle_rotate`` is the same as the ``circle-rotate`` console script."""

import sys

from circle_rotate.cli.main import main

sys.exit(main())
