"""A user's own model file, as a new user would write it (used by tests/test_usercode.py)."""

import torch
from torch import nn


class Net(nn.Module):
    """Conv body with adaptive pooling (takes any image size), a 16-d penultimate layer, ``fc`` head."""

    def __init__(self, num_classes: int = 10, width: int = 4) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
            nn.Linear(4 * width, 16), nn.ReLU(),
        )
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))
