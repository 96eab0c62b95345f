"""The shared figures build from small inputs with the expected panels."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import torch

from medmoe.viz import expert_load_bars, history_lines, phantom_gallery, routing_heatmaps


def test_figures_build():
    item = {"image": torch.rand(1, 16, 16), "mask": (torch.rand(1, 16, 16) > 0.8).float(),
            "text": "Unilateral pulmonary infection, one infected area, upper left lung.", "modality_name": "cxr"}
    assert len([a for a in phantom_gallery([item, item]).axes if a.images]) == 2
    fig = expert_load_bars({"a": [0.5, 0.5, 0.0], "b": [0.2, 0.3, 0.5]})
    assert len(fig.axes[0].patches) >= 6
    fig = routing_heatmaps({f"v{i}": np.eye(3) for i in range(4)}, row_labels=["x", "y", "z"], cols=3)
    assert sum(1 for a in fig.axes if a.collections) == 4
    fig = history_lines({"a": [{"epoch": 1, "train_loss": 1.0}, {"epoch": 2, "train_loss": 0.5}]})
    assert fig.axes[0].lines
