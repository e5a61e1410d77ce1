"""`python -m experiment_router`: see cli.py."""

import sys

from experiment_router.cli import main

sys.exit(main())
