#!/usr/bin/env python
"""Arrange the QaTa-COV19 download and LViT's text workbooks into the layouts MLMoE reads (Chapter 1).

A thin command-line wrapper: the program is :mod:`medmoe.papers.mlmoe.prepare.qata`
(``python data_scripts/prepare_qata.py --help``).
"""
import sys
from pathlib import Path

try:
    from medmoe.papers.mlmoe.prepare.qata import main
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from medmoe.papers.mlmoe.prepare.qata import main

if __name__ == "__main__":
    sys.exit(main())
