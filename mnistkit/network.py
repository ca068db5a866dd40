"""The seed CNN of the 2018 pipeline (pytorch/examples' MNIST net), no I/O.

Layer names and shapes are unchanged, so a ``state_dict`` saved by the 2018 scripts
(``model.dat``) loads into it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Network", "NETWORK_CONFIG"]

#: Recorded in every artifact; the network has no free hyper-parameters.
NETWORK_CONFIG = {"name": "seed-cnn-2018", "input_shape": [1, 28, 28], "classes": 10}


class Network(nn.Module):
    """conv(1→10, k5) → pool → relu → conv(10→20, k5) → dropout2d → pool → relu →
    fc(320→50) → relu → dropout → fc(50→10) → log_softmax."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, kernel_size=5)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
        self.conv2_drop = nn.Dropout2d()
        self.fc1 = nn.Linear(320, 50)
        self.fc2 = nn.Linear(50, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (batch, 1, 28, 28), normalised by mnistkit.data.preprocess
        x = F.relu(F.max_pool2d(self.conv1(x), 2))  # (batch, 10, 12, 12)
        x = F.relu(F.max_pool2d(self.conv2_drop(self.conv2(x)), 2))  # (batch, 20, 4, 4)
        x = x.reshape(-1, 320)
        x = F.relu(self.fc1(x))  # (batch, 50)
        x = F.dropout(x, training=self.training)
        x = self.fc2(x)  # (batch, 10)
        return F.log_softmax(x, dim=1)
