"""``python -m orchestra`` runs the command line."""

import sys

from orchestra.cli import main

sys.exit(main())
