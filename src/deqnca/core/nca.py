"""The NCA view of every model kind: replay its rule step by step, as a cellular automaton.

`rollout` works through the model protocol only (`CellularModel`: `initial_state`, `step_map`, `read`),
so the MNIST classifier, the self-classifying cells, the growing NCA, the maze solver and a user's own
kind are replayed the same way. It records, for a batch, the states z_0..z_T (or evenly spaced ones,
`even_frames`, so that memory stays bounded for any number of steps), the residual of every step
(free: f(z_t) is z_{t+1}), and the read-outs. `rollout_curve` runs the same over a whole dataset
without keeping states: accuracy and residual quantiles as a function of the step (classifiers).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from deqnca.core.solvers import residuals


@dataclass
class Rollout:
    """What `rollout` recorded (every tensor on the CPU).

    A read-out that is one vector per sample (class logits, shape (B, K)) is kept at every step; a
    read-out per cell (the cells' labels, the maze's path logits, the growing NCA's RGBA) is kept at the
    steps whose states are kept (`frame_steps`), or at the last step only when no state is kept, so that
    its memory stays that of the states.
    """

    states: torch.Tensor | None     # (B, F, C, H, W): the states at `frame_steps`, or None
    abs_residual: torch.Tensor      # (B, T): ‖f(z_t) − z_t‖ for t = 0..T-1
    rel_residual: torch.Tensor      # (B, T): ‖f(z_t) − z_t‖ / ‖f(z_t)‖
    readouts: torch.Tensor          # (B, R, ...): the read-out `model.read(z_t, x)` at `readout_steps`
    frame_steps: list[int] | None = None     # the step of each kept state (0..T: every one, unless `frames`)
    readout_steps: list[int] | None = None   # the step of each kept read-out

    @property
    def probs(self) -> torch.Tensor:
        """(B, R, K) class probabilities: the softmax of a classifier's read-outs (its logits)."""
        return torch.softmax(self.readouts, -1)


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
def rollout(model, x, steps: int, z0=None, generator=None, frames=None, keep_states: bool = True) -> Rollout:
    """The NCA view of any model kind: iterate its rule `steps` times on the batch `x` (in eval mode),
    from its initial state (or `z0`).

    Args:
        model: a `CellularModel` (e.g. from `deqnca.load`).
        x: the input batch the rule is bound to (what `x` is for each kind: its class docstring).
        steps: how many steps T.
        z0: the initial state (default: `model.initial_state(x, generator)`).
        generator: the randomness of the initial state and of a stochastic rule.
        frames: the steps whose states are kept (default: every one, z_0..z_T); pass e.g.
            `even_frames(steps)` to keep memory bounded however many steps are run. The residuals of
            every step are always kept (a few numbers per step).
        keep_states: keep states (on the CPU) for pictures.

    Returns:
        A `Rollout`: states, residuals per step, read-outs (see `Rollout` for which steps).

    Examples:
        >>> model, _ = deqnca.load("mnist-equilibrium")  # doctest: +SKIP
        >>> r = deqnca.rollout(model, x, 100)  # doctest: +SKIP
        >>> r.rel_residual[:, -1]  # doctest: +SKIP
    """
    model.eval()
    f = model.step_map(x, generator)
    z = model.initial_state(x, generator) if z0 is None else z0
    keep = set(range(steps + 1) if frames is None else (int(t) for t in frames)) if keep_states else set()
    first = model.read(z, x)
    per_step = first.dim() == 2               # one vector per sample: every step; else the kept frames
    read_at = set(range(steps + 1)) if per_step else (keep if keep_states else {steps})
    states, kept, reads, read_steps = [], [], [], []

    def record(t, z, r=None):
        if t in keep:
            states.append(z.float().cpu())
            kept.append(t)
        if t in read_at:
            reads.append((model.read(z, x) if r is None else r).float().cpu())
            read_steps.append(t)

    record(0, z, first)
    abs_r, rel_r = torch.empty(z.shape[0], steps), torch.empty(z.shape[0], steps)
    for t in range(steps):
        z_next = f(z)
        a, r = residuals(z_next, z)
        abs_r[:, t], rel_r[:, t] = a.cpu(), r.cpu()
        z = z_next
        record(t + 1, z)
    return Rollout(torch.stack(states, dim=1) if keep_states else None, abs_r, rel_r, torch.stack(reads, dim=1),
                   kept if keep_states else None, read_steps)


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
