"""``python -m ctbrainage.run``: the same as ``python run_all.py``."""

import sys

from ctbrainage.run.cli import main

sys.exit(main())
