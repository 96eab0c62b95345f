"""Training recipes: each paper's losses, training steps and evaluation, on top of :mod:`medmoe.engine`.

One file per paper; the chapter notebooks import from here instead of defining them in cells.
"""
