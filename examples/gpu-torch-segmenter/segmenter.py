"""The network of the example segmenter: a small fully convolutional 3D net (shared by inference and packaging)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["CONV3_LAYERS", "Segmenter", "build"]

CONV3_LAYERS = 2  # 3x3x3 convolutions: each needs one voxel of context on every side


class Segmenter(nn.Module):
    """conv3-ReLU-conv3-ReLU-conv1: per-voxel logits of "structure" versus background."""

    def __init__(self, features: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(1, features, kernel_size=3, padding=1)
        self.conv2 = nn.Conv3d(features, features, kernel_size=3, padding=1)
        self.head = nn.Conv3d(features, 1, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits with the input's spatial shape; x is (batch, 1, depth, height, width)."""
        return self.head(torch.relu(self.conv2(torch.relu(self.conv1(x)))))


def build(config: dict[str, Any]) -> Segmenter:
    """The network described by a model's config.json."""
    return Segmenter(features=int(config.get("features", 8)))
