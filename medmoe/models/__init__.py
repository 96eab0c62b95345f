"""One file per model. Chapter 0's toy mixture lives in :mod:`medmoe.models.primer`."""

from medmoe.models.primer import ToyMoESegmenter

__all__ = ["ToyMoESegmenter"]
