#!/usr/bin/env python
"""Assemble a MedSeg-HQ-like set and SegMoTE's out-of-domain sets in the IMIS-Bench layout (Chapter 3).

A thin command-line wrapper: the program is :mod:`medmoe.papers.segmote.prepare`
(``python data_scripts/build_medseg_hq.py --help``).
"""
import sys
from pathlib import Path

try:
    from medmoe.papers.segmote.prepare import main
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from medmoe.papers.segmote.prepare import main

if __name__ == "__main__":
    sys.exit(main())
