"""A conventional small CNN of about the essay model's size, for the crop comparison (Figure 2).

conv 1→16 3×3, ReLU, max-pool 2 → conv 16→24 3×3, ReLU, max-pool 2 → flatten 24·7·7 → linear 10:
15,410 parameters (the essay's model: 15,402). It needs a fixed 28×28 input, so a crop is shown to
it *zero-padded in place*: the visible window at its original position, the rest black.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from deqnca.core.configs import load_dataclass
from deqnca.core.model import MODELS, CellularModel
from deqnca.core.nca import crop


@dataclass
class CnnModelConfig:
    """The baseline has no options: its layers are fixed (the essay model's size)."""

    @classmethod
    def from_dict(cls, d: dict) -> CnnModelConfig:
        """The config from a plain dict; unknown keys are an error."""
        return load_dataclass(cls, d, what="cnn model config")

    def to_dict(self) -> dict:
        """A plain, JSON-ready dict."""
        return asdict(self)


@MODELS.register("cnn")
class SmallCNN(CellularModel):
    """The baseline CNN (15,410 parameters); trained by the `cnn` task (deqnca.tasks.cnn).

    A feed-forward network is the degenerate cellular model: its state is its input and its step is the
    identity (nothing to iterate: the NCA view's residual is 0 from the start), and its read-out is the
    whole network. So it loads, rolls out and is described like every kind (`deqnca.load("baselines/cnn-small")`).
    """
    Config = CnnModelConfig

    def __init__(self, config: CnnModelConfig | dict | None = None):
        super().__init__()
        self.config = config if isinstance(config, CnnModelConfig) else CnnModelConfig.from_dict(config or {})
        self.conv1 = torch.nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(16, 24, 3, padding=1)
        self.fc = torch.nn.Linear(24 * 7 * 7, 10)

    def initial_state(self, x, generator=None):
        return x

    def step_map(self, x, generator=None):
        return lambda z: z

    def read(self, z, x):
        z = F.max_pool2d(F.relu(self.conv1(z)), 2)
        z = F.max_pool2d(F.relu(self.conv2(z)), 2)
        return self.fc(z.flatten(1))

    def forward(self, x, generator=None, **_):
        return self.read(x, x)


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
