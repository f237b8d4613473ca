"""The self-classifying digits' data and losses: digits at the grid size, the alive cells, each cell's right
label, the digits (segments) of a canvas, and the article's L2 loss (or cross-entropy) over the alive cells."""
from __future__ import annotations

import torch
import torch.nn.functional as F

ALIVE_THRESHOLD = 0.1


# --- data -----------------------------------------------------------------------------------------------

def resize_digits(x: torch.Tensor, size: int) -> torch.Tensor:
    """28×28 digits at `size` (28, or 14 by 2×2 averaging)."""
    if size == x.shape[-1]:
        return x
    if x.shape[-1] % size:
        raise ValueError(f"cannot resize {x.shape[-1]}x{x.shape[-1]} digits to {size}; use a divisor (28 or 14)")
    return F.avg_pool2d(x, x.shape[-1] // size)


def alive_mask(x: torch.Tensor, threshold: float = ALIVE_THRESHOLD) -> torch.Tensor:
    """(B, H, W) bool: the cells on the ink."""
    return x[:, 0] > threshold


def truth_map(x: torch.Tensor, labels: torch.Tensor, threshold: float = ALIVE_THRESHOLD) -> torch.Tensor:
    """(B, H, W) long: each alive cell's right label, −1 on dead cells."""
    alive = alive_mask(x, threshold)
    return torch.where(alive, labels.view(-1, 1, 1).to(torch.long), torch.full_like(alive, -1, dtype=torch.long))


def single_segments(x: torch.Tensor, threshold: float = ALIVE_THRESHOLD) -> torch.Tensor:
    """(B, H, W) long: 0 on the alive cells (one digit per image), −1 elsewhere."""
    return alive_mask(x, threshold).long() - 1


def canvas_batch(panoramas, threshold: float = ALIVE_THRESHOLD):
    """(x (N, 1, S, S), truth (N, S, S), segments (N, S, S)) for canvases of several digits
    (tasks/mnist/panoramas.py): each digit's alive cells inside its box form its segment."""
    x = torch.stack([p.canvas for p in panoramas])
    truth = torch.full(x[:, 0].shape, -1, dtype=torch.long)
    segments = torch.full_like(truth, -1)
    alive = alive_mask(x, threshold)
    for n, p in enumerate(panoramas):
        for k, (label, r, c, _) in enumerate(p.digits):
            box = alive[n, r:r + 28, c:c + 28]
            truth[n, r:r + 28, c:c + 28][box] = label
            segments[n, r:r + 28, c:c + 28][box] = k
    return x, truth, segments


# --- losses ---------------------------------------------------------------------------------------------

def l2_loss(logits: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """(B,) the article's loss: ½ Σ over alive cells and classes of (score − one-hot)²."""
    alive = (truth >= 0).unsqueeze(1)
    target = F.one_hot(truth.clamp(min=0), logits.shape[1]).permute(0, 3, 1, 2).to(logits.dtype)
    return ((logits - target).pow(2) * alive).sum(dim=(1, 2, 3)) / 2


def ce_loss(logits: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """(B,) mean cross-entropy of each image's alive cells."""
    per_cell = F.cross_entropy(logits, truth.clamp(min=0), reduction="none")
    alive = (truth >= 0).to(logits.dtype)
    return (per_cell * alive).sum(dim=(1, 2)) / alive.sum(dim=(1, 2)).clamp(min=1)


LOSSES = {"l2": l2_loss, "ce": ce_loss}
