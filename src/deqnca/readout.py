"""Read-outs: how a state (B, C, H, W) becomes an answer.

One MLP decoder (C -> hidden -> classes), applied to
- the global average of the state (the essay's read-out), or
- local windows: the average over each k×k neighbourhood, giving a class map (B, classes, H, W) —
  every cell answers from what it can see, the NCA reading of a DEQ (k = 1: per cell).
The MLP is evaluated as 1×1 convolutions so the same weights serve all three.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn


class MLPReadout(nn.Module):
    def __init__(self, state_channels: int = 32, hidden: int = 32, classes: int = 10):
        super().__init__()
        self.fc1 = nn.Linear(state_channels, hidden)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, z):
        """Global pool read-out: (B, C, H, W) -> (B, classes)."""
        return self.fc2(F.relu(self.fc1(z.mean(dim=(2, 3)))))

    def local(self, z, window: int = 1):
        """Class logits of every cell from the mean of its window×window neighbourhood."""
        if window > 1:
            H, W = z.shape[-2:]
            # an even window centred on a cell overhangs by one: keep the first H x W outputs
            z = F.avg_pool2d(z, window, stride=1, padding=window // 2, count_include_pad=False)[..., :H, :W]
        h = F.relu(F.conv2d(z, self.fc1.weight[..., None, None], self.fc1.bias))
        return F.conv2d(h, self.fc2.weight[..., None, None], self.fc2.bias)
