#!/usr/bin/env python
"""Thin wrapper: `python loadtests/run.py ARGS` == `bonn-serve loadtest ARGS` (logic in bonn_serve/loadtest.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bonn_serve.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["loadtest", *sys.argv[1:]]))
