#!/usr/bin/env python
"""Download and check the real datasets and weights of the catalogue (medmoe.data.sources).

A thin command-line wrapper: the program is :mod:`medmoe.data.fetch_cli` (``python data_scripts/fetch.py --help``).
"""
import sys
from pathlib import Path

try:
    from medmoe.data.fetch_cli import main
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from medmoe.data.fetch_cli import main

if __name__ == "__main__":
    sys.exit(main())
