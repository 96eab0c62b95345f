#!/usr/bin/env python
"""Arrange AMOS, the MSD CT tasks and TotalSegmentator into the Universal Model's layout (Chapter 4).

A thin command-line wrapper: the program is :mod:`medmoe.papers.mome.prepare`
(``python data_scripts/prepare_universal.py --help``).
"""
import sys
from pathlib import Path

try:
    from medmoe.papers.mome.prepare import main
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from medmoe.papers.mome.prepare import main

if __name__ == "__main__":
    sys.exit(main())
