"""Read-outs: how a state (B, C, H, W) becomes an answer.

One MLP decoder (C -> hidden -> classes), applied to
- the global average of the state (the essay's read-out), or
- local windows: the average over each k×k neighbourhood, giving a class map (B, classes, H, W) —
  every cell answers from what it can see, the NCA reading of a DEQ (k = 1: per cell).
The MLP is evaluated as 1×1 convolutions so the same weights serve all three.

A model trained with per-cell targets (self-classifying MNIST: every cell on the digit's ink is
told the digit's label) answers for a whole image by `ink_vote`: the mean of the cell logits over
the ink cells.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from deqnca.core.registry import Registry

INK_THRESHOLD = 0.1
READOUTS = Registry("readout", "an nn.Module(state_channels, hidden, classes, norm) with read(z, x) -> logits "
                    "and loss(z, x, y) -> (loss, logits)")


def ink_mask(x, threshold: float = INK_THRESHOLD):
    """(B, 1, H, W) float mask of the cells whose input is ink (any channel above threshold)."""
    return (x.amax(dim=1, keepdim=True) > threshold).to(x.dtype)


def ink_vote(cell_logits, mask):
    """(B, K): mean of the cell logits over the mask (over all cells where a sample has no ink)."""
    empty = mask.sum(dim=(2, 3), keepdim=True) == 0
    mask = torch.where(empty, torch.ones_like(mask), mask)
    return (cell_logits * mask).sum(dim=(2, 3)) / mask.sum(dim=(2, 3))


def per_cell_loss(cell_logits, labels, mask):
    """Cross-entropy of every ink cell against its image's label, averaged over ink cells."""
    target = labels[:, None, None].expand(-1, *cell_logits.shape[2:])
    ce = F.cross_entropy(cell_logits, target, reduction="none")
    m = mask[:, 0]
    return (ce * m).sum() / m.sum().clamp(min=1)


class MLPReadout(nn.Module):
    """norm="batch" standardises the pooled state per channel (BatchNorm, 2·C parameters) before the
    MLP. A contractive rule's equilibrium lives in (−1, 1) and its pooled channels differ between
    images by ~1e-3 at initialisation (docs/mnist.md); standardising them is what lets the
    equilibrium-faithful model learn at the essay's pace."""

    def __init__(self, state_channels: int = 32, hidden: int = 32, classes: int = 10, norm: str = "none"):
        super().__init__()
        if norm not in ("none", "batch"):
            raise ValueError(f"unknown read-out norm {norm!r}; choose 'none' or 'batch'")
        self.norm = nn.BatchNorm1d(state_channels) if norm == "batch" else None
        self.fc1 = nn.Linear(state_channels, hidden)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, z):
        """Global pool read-out: (B, C, H, W) -> (B, classes)."""
        pooled = z.mean(dim=(2, 3))
        if self.norm is not None:
            pooled = self.norm(pooled)
        return self.fc2(F.relu(self.fc1(pooled)))

    def local(self, z, window: int = 1):
        """Class logits of every cell from the mean of its window×window neighbourhood."""
        if window > 1:
            H, W = z.shape[-2:]
            # an even window centred on a cell overhangs by one: keep the first H x W outputs
            z = F.avg_pool2d(z, window, stride=1, padding=window // 2, count_include_pad=False)[..., :H, :W]
        if self.norm is not None:   # cells are standardised with the running (whole-image) statistics
            n = self.norm
            z = F.batch_norm(z, n.running_mean, n.running_var, n.weight, n.bias, False, 0.0, n.eps)
        h = F.relu(F.conv2d(z, self.fc1.weight[..., None, None], self.fc1.bias))
        return F.conv2d(h, self.fc2.weight[..., None, None], self.fc2.bias)


@READOUTS.register("global")
class GlobalReadout(MLPReadout):
    """The essay's read-out, eq. (1): the MLP of the globally pooled state; trained by cross-entropy."""

    def read(self, z, x):
        """(B, classes) logits of state `z` for input `x`."""
        return self(z)

    def loss(self, z, x, y):
        """(loss, logits): cross-entropy of the pooled read-out (in float32)."""
        logits = self(z).float()
        return F.cross_entropy(logits, y), logits


@READOUTS.register("cell")
class CellReadout(MLPReadout):
    """Self-classifying read-out: every cell answers from its own state; an image's answer is the ink
    vote of its cells, and training tells every ink cell its image's label."""

    def read(self, z, x):
        """(B, classes) logits: the mean of the cell logits over the ink cells of `x`."""
        return ink_vote(self.local(z, 1), ink_mask(x))

    def loss(self, z, x, y):
        """(loss, logits): per-cell cross-entropy over the ink cells, and the ink vote."""
        cells = self.local(z, 1).float()
        mask = ink_mask(x)
        return per_cell_loss(cells, y, mask), ink_vote(cells.detach(), mask)


DIHEDRAL = ("none", "d4")


def dihedral_mean(fn, z):
    """The mean of g⁻¹·fn(g·z) over the 8 rotations and reflections g of the square grid (the group D4), for a
    map `fn` from (B, C, H, W) to (B, K, H, W): the symmetrised map is equivariant by construction (an
    equivariant solve followed by it makes the whole model so), whatever `fn` learned."""
    out = 0
    for k in range(4):
        for flip in (False, True):
            t = torch.rot90(z, k, (2, 3))
            y = fn((t.flip(3) if flip else t).contiguous())     # rot90 is a strided view: convolutions on it are slower
            out = out + torch.rot90(y.flip(3) if flip else y, -k, (2, 3))
    return out / 8


class ConvHead(nn.Module):
    """Per-cell read-out of a spatial answer (DT-recall's head): three bias-free 3x3 convolutions
    C -> 32 -> 8 -> classes with ReLUs, giving class logits (B, classes, H, W) for every pixel."""

    def __init__(self, state_channels: int = 32, classes: int = 2):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(state_channels, 32, 3, padding=1, bias=False), nn.ReLU(),
            nn.Conv2d(32, 8, 3, padding=1, bias=False), nn.ReLU(),
            nn.Conv2d(8, classes, 3, padding=1, bias=False))

    def forward(self, z):
        return self.layers(z)
