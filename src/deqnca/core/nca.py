"""The NCA view: replay a trained model's rule step by step, as a cellular automaton.

`rollout` records, for a batch, the states z_0..z_T (or evenly spaced ones, `even_frames`, so that
memory stays bounded for any number of steps), the residual of every step (free: f(z_t) is z_{t+1}),
and the read-out's class probabilities at every step. `rollout_curve` runs the same over
a whole dataset without keeping states: accuracy and residual quantiles as a function of the step.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from deqnca.core.solvers import residuals


@dataclass
class Rollout:
    states: torch.Tensor | None     # (B, F, C, H, W) on CPU: the states at `frame_steps`, or None
    abs_residual: torch.Tensor      # (B, T): ‖f(z_t) − z_t‖ for t = 0..T-1
    rel_residual: torch.Tensor      # (B, T): ‖f(z_t) − z_t‖ / ‖f(z_t)‖
    probs: torch.Tensor             # (B, T+1, classes)
    frame_steps: list[int] | None = None    # the step of each kept state (0..T: every one, unless `frames`)


def even_frames(steps: int, count: int = 200) -> list[int]:
    """At most `count` steps evenly spaced over 0..steps, both ends included (every step when there are
    no more than `count`): which states a GIF keeps, so that its memory does not grow with the steps.

    Example:
        >>> even_frames(10, 4)
        [0, 3, 7, 10]
    """
    if steps + 1 <= count:
        return list(range(steps + 1))
    return sorted({round(i * steps / (count - 1)) for i in range(count)})


@torch.no_grad()
def rollout(model, x, steps: int, z0=None, generator=None, keep_states: bool = True, frames=None) -> Rollout:
    """Iterate the model's rule `steps` times from its initial state (or `z0`) on the batch `x`.

    Args:
        keep_states: keep states (on the CPU) for pictures.
        frames: the steps whose states are kept (default: every one, z_0..z_T); pass e.g.
            `even_frames(steps)` to keep memory bounded however many steps are run. The residuals and
            probabilities of every step are always kept (a few numbers per step).
    """
    model.eval()
    f, u = model.step_map(x)
    z = model.initial_state(u, generator) if z0 is None else z0
    keep = set(range(steps + 1) if frames is None else (int(t) for t in frames)) if keep_states else set()
    states, kept = [], []

    def record(t, z):
        if t in keep:
            states.append(z.float().cpu())
            kept.append(t)

    record(0, z)
    p0 = torch.softmax(model.read(z, x), -1).cpu()
    probs = torch.empty(p0.shape[0], steps + 1, p0.shape[-1])
    probs[:, 0] = p0
    abs_r, rel_r = torch.empty(x.shape[0], steps), torch.empty(x.shape[0], steps)
    for t in range(steps):
        z_next = f(z)
        a, r = residuals(z_next, z)
        abs_r[:, t], rel_r[:, t] = a.cpu(), r.cpu()
        z = z_next
        probs[:, t + 1] = torch.softmax(model.read(z, x), -1).cpu()
        record(t + 1, z)
    return Rollout(torch.stack(states, dim=1) if keep_states else None, abs_r, rel_r, probs,
                   kept if keep_states else None)


@torch.no_grad()
def rollout_curve(model, x, y, steps: int, batch_size: int = 50, seed: int = 0) -> dict:
    """Accuracy and residual statistics after every step t = 0..steps over (x, y)."""
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    correct = torch.zeros(steps + 1)
    rel_all = []
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].to(device)
        r = rollout(model, xb, steps, generator=gen, keep_states=False)
        correct += (r.probs.argmax(-1) == y[i:i + batch_size, None].cpu()).float().sum(0)
        rel_all.append(r.rel_residual)
    rel = torch.cat(rel_all).double()                     # (N, steps)
    q = torch.quantile(rel, torch.tensor([0.5, 0.99], dtype=torch.double), dim=0)
    return {
        "steps": list(range(steps + 1)),
        "accuracy": (correct / len(x)).tolist(),
        # residual of the state *at* step t, t = 0..steps-1
        "rel_median": q[0].tolist(),
        "rel_p99": q[1].tolist(),
        "frac_below_1e-3": (rel <= 1e-3).double().mean(0).tolist(),
        "n": len(x),
    }


def crop(x, fraction: float, anchor: str):
    """The visible part of images x (B, 1, H, W): a square window holding `fraction` of the area."""
    H, W = x.shape[-2:]
    s = max(4, round(H * fraction ** 0.5))
    t = max(4, round(W * fraction ** 0.5))
    rows = {"top": slice(0, s), "bottom": slice(H - s, H), "centre": slice((H - s) // 2, (H - s) // 2 + s)}
    cols = {"left": slice(0, t), "right": slice(W - t, W), "centre": slice((W - t) // 2, (W - t) // 2 + t)}
    if anchor == "centre":
        r, c = rows["centre"], cols["centre"]
    else:
        vert, horiz = anchor.split("-")
        r, c = rows[vert], cols[horiz]
    return x[..., r, c]


ANCHORS = ("top-left", "top-right", "bottom-left", "bottom-right", "centre")
