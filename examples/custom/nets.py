"""Your own model: any callable ``(num_classes, in_channels) -> torch.nn.Module``.

Named in the config as ``model.name: "examples.custom.nets:small_cnn"``.
"""

from __future__ import annotations

from torch import nn


def small_cnn(num_classes: int, in_channels: int) -> nn.Module:
    """Two conv blocks and a linear head for 16x16 images (about 5k parameters)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),   # 16 -> 8
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),            # 8 -> 4
        nn.Flatten(), nn.Linear(16 * 4 * 4, num_classes),
    )
