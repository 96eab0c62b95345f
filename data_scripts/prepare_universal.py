#!/usr/bin/env python
"""Arrange AMOS, the MSD CT tasks and TotalSegmentator into the Universal Model's layout (Chapter 4).

These are the open part of the CLIP-Driven Universal Model's collection, not the 3,410 scans it and MoME report:
BTCV, Pancreas-CT, CHAOS, LiTS, KiTS, WORD, AbdomenCT-1K, CT-ORG and AbdomenCT-12organ need an account, a request
or a conversion (``--list``). Chapter 4's ``paper`` profile reads ``data/universal`` and its
``dataset_list/universal_{train,test}.txt`` as this script writes them.

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
