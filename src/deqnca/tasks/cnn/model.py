"""A conventional small CNN of about the essay model's size, for the crop comparison (Figure 2).

conv 1→16 3×3, ReLU, max-pool 2 → conv 16→24 3×3, ReLU, max-pool 2 → flatten 24·7·7 → linear 10:
15,410 parameters (the essay's model: 15,402). It needs a fixed 28×28 input, so a crop is shown to
it *zero-padded in place*: the visible window at its original position, the rest black.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from deqnca.core.nca import crop


class _CNNConfig:
    def to_dict(self) -> dict:
        return {"model": "cnn-small"}


class SmallCNN(nn.Module):
    """The baseline CNN (15,410 parameters); trained by the `cnn` task (deqnca.tasks.cnn)."""

    def __init__(self):
        super().__init__()
        self.config = _CNNConfig()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 24, 3, padding=1)
        self.fc = nn.Linear(24 * 7 * 7, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))


def pad_in_place(x, fraction, anchor):
    """The crop of `x` at its original position on a black 28×28 canvas."""
    mask = torch.zeros_like(x)
    window = crop(torch.ones_like(x), fraction, anchor)
    H, W = x.shape[-2:]
    h, w = window.shape[-2:]
    r = {"top": 0, "bottom": H - h, "centre": (H - h) // 2}
    c = {"left": 0, "right": W - w, "centre": (W - w) // 2}
    vert, horiz = ("centre", "centre") if anchor == "centre" else anchor.split("-")
    mask[..., r[vert]:r[vert] + h, c[horiz]:c[horiz] + w] = 1
    return x * mask


@torch.no_grad()
def crop_accuracy_cnn(model, x, y, fractions, anchors, batch_size=1000) -> dict:
    model.eval()
    out = {}
    for anchor in anchors:
        accs = []
        for f in fractions:
            correct = 0
            for i in range(0, len(x), batch_size):
                correct += (model(pad_in_place(x[i:i + batch_size], f, anchor)).argmax(1) ==
                            y[i:i + batch_size]).sum().item()
            accs.append(correct / len(x))
        out[anchor] = accs
    return {"fractions": list(fractions), "accuracy": out, "n": len(x)}
