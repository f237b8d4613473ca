"""Panoramas: large canvases holding several non-overlapping MNIST digits at known positions.

Deterministic by seed: the same (images, size, count, seed) always gives the same canvases, so a
benchmark number can be reproduced exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Panorama:
    canvas: torch.Tensor            # (1, S, S)
    digits: list                    # [(label, row, col, test_index)], each a 28x28 box at (row, col)


def make_panoramas(images: torch.Tensor, labels: torch.Tensor, n: int, size: int = 84, per_canvas: int = 3,
                   seed: int = 0, max_tries: int = 1000) -> list[Panorama]:
    """`n` canvases of size×size with `per_canvas` digits each, boxes not overlapping."""
    h, w = images.shape[-2:]
    if size < h or size < w:
        raise ValueError(f"canvas size {size} is smaller than a digit ({h}x{w})")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        canvas = torch.zeros(1, size, size)
        boxes = []
        for _ in range(per_canvas):
            for _ in range(max_tries):
                r, c = (int(v) for v in rng.integers(0, size - h + 1, size=2))
                if all(abs(r - r2) >= h or abs(c - c2) >= w for _, r2, c2, _ in boxes):
                    break
            else:
                raise ValueError(f"cannot place {per_canvas} digits without overlap on a {size}x{size} canvas")
            i = int(rng.integers(0, len(images)))
            canvas[:, r:r + h, c:c + w] = torch.maximum(canvas[:, r:r + h, c:c + w], images[i].view(1, h, w))
            boxes.append((int(labels[i]), r, c, i))
        out.append(Panorama(canvas, boxes))
    return out
