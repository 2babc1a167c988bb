#!/usr/bin/env python
"""Run the pipeline with papermill (notebooks 01-07; 08-09 on request): ``run_all.py --help``.

Without arguments it runs the demo profile end to end on the embedded synthetic cohort. The logic
lives in the package ``ctbrainage.run``; this is its command line, ``ctbrainage.run.cli``.
"""

from __future__ import annotations

import sys

from ctbrainage.run.cli import main

if __name__ == "__main__":
    sys.exit(main())
