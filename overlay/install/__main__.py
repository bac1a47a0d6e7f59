"""python -m overlay.install: the same as the overlay-install command."""

import sys

from overlay.install.cli import main

sys.exit(main())
