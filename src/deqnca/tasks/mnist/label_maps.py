"""Local read-out on panoramas: per-pixel label maps from the steady state, scored per digit.

Each cell's label comes from the read-out MLP applied to the mean state over its window×window
neighbourhood (`MLPReadout.local`); a digit's predicted label is the argmax of the mean logits over
its 28×28 box. `window = 28` matches the size of a digit; the global read-out is the limit of a
window covering the whole canvas. A model trained per cell (read-out "cell") is read at window 1 and
a digit's label is its ink vote: the mean cell logits over the ink pixels of its box — the
question it was trained to answer.
"""
from __future__ import annotations

import torch

from deqnca.core.readout import ink_mask, ink_vote
from deqnca.tasks.mnist.panoramas import make_panoramas


@torch.no_grad()
def label_maps(model, canvases, window: int = 28, generator=None, **solve_kw):
    """(label map (B, H, W), logits map (B, K, H, W)) of a batch of canvases (B, 1, H, W)."""
    model.eval()
    z, _ = model.solve(canvases, generator=generator, **solve_kw)
    logits = model.readout.local(z, window)
    return logits.argmax(1), logits


@torch.no_grad()
def panorama_accuracy(model, images, labels, n: int = 100, size: int = 84, per_canvas: int = 3,
                      window: int = 28, seed: int = 0, batch_size: int = 10) -> dict:
    device = next(model.parameters()).device
    cell_model = model.config.readout == "cell"
    if cell_model:
        window = 1
    pans = make_panoramas(images, labels, n, size, per_canvas, seed)
    gen = torch.Generator(device=device).manual_seed(seed)
    correct = total = 0
    per_class = torch.zeros(10, 2)
    for i in range(0, n, batch_size):
        chunk = pans[i:i + batch_size]
        x = torch.stack([p.canvas for p in chunk]).to(device)
        _, logits = label_maps(model, x, window, generator=gen)
        for k, p in enumerate(chunk):
            for label, r, c, _ in p.digits:
                box = logits[k:k + 1, :, r:r + 28, c:c + 28]
                if cell_model:
                    box_ink = ink_mask(x[k:k + 1, :, r:r + 28, c:c + 28])
                    pred = ink_vote(box, box_ink).argmax().item()
                else:
                    pred = box.mean((2, 3)).argmax().item()
                correct += int(pred == label)
                total += 1
                per_class[label, 0] += int(pred == label)
                per_class[label, 1] += 1
    return {"accuracy": correct / total, "digits": total, "size": size, "per_canvas": per_canvas,
            "window": window, "per_class": (per_class[:, 0] / per_class[:, 1].clamp(min=1)).tolist()}
