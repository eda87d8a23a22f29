#!/usr/bin/env python
"""Thin wrapper: `python loadtests/run.py ARGS` is `bonn-serve loadtest ARGS`.
The logic lives in bonn_serve/loadtest.py so the installed command has it too."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bonn_serve.cli import main

if __name__ == "__main__":
    sys.exit(main(["loadtest", *sys.argv[1:]]))
