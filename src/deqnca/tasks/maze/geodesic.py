"""The geodesic rule: a max-plus ("tropical") cellular automaton whose fixed point is unique for any
weights and any input, reached exactly from any initial state, and depends on inputs arbitrarily far away.

Each of C state channels is a flood from learned emitters through open pixels:

    y'_c(p) = clip(max(s_c(p), open(p) · (max_{q ∈ N4(p)} y_c(q) − K(p))), 0, Z)

- s_c(p) = Z·[a_c(p) > 0]: pixel p emits in channel c when a learned 1x1 convolution of its colour,
  a_c, is positive (so a channel's emitters are colour classes: the start, the goal, both, ...).
  Emission is all or nothing at the full strength Z = cost_max·H·W, more than the cost of any walk
  through the image, so a flood never dies out however large the maze; a_c is trained through the
  sigmoid's gradient (straight-through). Graded strengths were tried and fail: a weak emitter's
  flood ends after (strength / cost) pixels, and training drifted to such short floods (docs/mazes.md).
- K(p) ∈ [cost_min, cost_max]: the learned cost of stepping onto p (one map for all channels).
- open(p) = 1 where the input is not black in every channel (the same mask the maze read-out
  applies: walls are never path), 0 on walls: walls neither carry nor pass a signal.

**Why the fixed point is unique.** Take two fixed points y1, y2 and a pixel p where y1 − y2 is
largest, δ > 0. y1(p) cannot come from the emitter or the 0 branch (y2(p) is at least as large
there), so y1(p) = y1(q) − K(p) for an open neighbour q, and y2(p) ≥ y2(q) − K(p): q has a gap ≥ δ
too, and y1(q) > y1(p). Following such q gives a strictly increasing chain in a finite grid, which
must end at an emitter or 0 branch: contradiction. (The clip at Z never binds at a fixed point.) So
y* is unique: y*_c(p) = Z − (cost of the cheapest walk from an emitter of c to p through open
pixels), or 0 where none reaches. Picard iteration reaches it exactly (residual 0, bit for bit, not a
tolerance) from any state: from zeros monotonically, in one step per pixel of the longest cheapest
walk; from any state in [0, Z] its excess over y* drains by at least cost_min per step
(`steps_bound`).

**Why far inputs are not damped.** The map is non-expansive (1-Lipschitz in the max norm) but no
contraction: uniqueness comes from every step *subtracting* at least cost_min, not from
multiplying by γ < 1. An emitter d pixels away sets y* to Z minus the exact cost of the way there,
where a γ-contraction would pass at most γ^d of it (docs/mazes.md). The price: the number of
iterations grows with the distance information must travel — on mazes, with their size and winding.

The state's absolute values grow with the image (Z ∝ H·W); a read-out must look at what does not:
`features(y)` gives the differences to the four neighbours, divided by cost_max and clipped to
[−2, 2] (walls and unreached pixels, at 0, read −2 from an open pixel). Float32 resolves them to
about Z·6e-8: 0.02 at 201×201 (408 px), 0.25 at the 1001×1001 limit (2008 px).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from deqnca.core.rules import RULES


def _neighbour_max(y):
    """max over the 4-neighbourhood, the border reading 0."""
    p = F.pad(y, (1, 1, 1, 1))
    return torch.maximum(torch.maximum(p[..., :-2, 1:-1], p[..., 2:, 1:-1]),
                         torch.maximum(p[..., 1:-1, :-2], p[..., 1:-1, 2:]))


def neighbour_features(y, scale: float):
    """(B, 4C, H, W): y(q) − y(p) for the four neighbours q of every pixel p (the border reading 0),
    divided by `scale` and clipped to [−2, 2]: what a read-out of a geodesic state may look at."""
    p = F.pad(y, (1, 1, 1, 1))
    d = torch.cat([p[..., :-2, 1:-1] - y, p[..., 2:, 1:-1] - y, p[..., 1:-1, :-2] - y, p[..., 1:-1, 2:] - y], 1)
    return (d / scale).clamp(-2, 2)


def _step(y, s, cost, open_, top: float):
    """One geodesic step: the flood from the neighbours minus the cost of stepping here, or the emitter."""
    flood = open_ * (_neighbour_max(y) - cost)
    return torch.maximum(s, flood).clamp(0, top)


class NeighbourFeatures(nn.Module):
    """`neighbour_features` as a module (no parameters), to put in front of a read-out."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def forward(self, y):
        return neighbour_features(y, self.scale)


@RULES.register("geodesic")  # max-plus flood: unique fixed point, no contraction
class GeodesicRule(nn.Module):
    """Max-plus flood rule (module docstring): unique fixed point for any weights, no contraction."""

    def __init__(self, input_channels: int = 3, state_channels: int = 8, cost_min: float = 1.0,
                 cost_max: float = 2.0):
        super().__init__()
        if not 0 < cost_min <= cost_max:
            raise ValueError(f"geodesic rule: need 0 < cost_min <= cost_max, got {cost_min}, {cost_max}")
        self.input_channels, self.state_channels = input_channels, state_channels
        self.cost_min, self.cost_max = cost_min, cost_max
        # a pixel's colour -> an emission logit per channel and one cost logit. A 3x3 encoder with a hidden
        # layer (so that emitters could depend on the neighbourhood) collapsed in training: every emitter
        # died (5-13 mazes, graded emitters, docs/mazes.md); it has not been tried with binary ones
        self.encode = nn.Conv2d(input_channels, state_channels + 1, 1)

    def ceiling(self, u) -> float:
        """Z: larger than the cost of any walk through the image, the emitters' strength."""
        return self.cost_max * u.shape[-2] * u.shape[-1]

    def steps_bound(self, height: int, width: int) -> int:
        """Picard steps within which any state in [0, Z] reaches the fixed point exactly on an image of this
        size: the excess over y* drains by >= cost_min per step and is at most Z; from zeros the flood
        needs at most one step per pixel."""
        return math.ceil(self.cost_max / self.cost_min * height * width) + 1

    def fields(self, u):
        """(emitters s, costs K, open mask) of input u: (B, C, H, W), (B, 1, H, W), (B, 1, H, W)."""
        a, k = self.encode(u).float().split([self.state_channels, 1], dim=1)
        open_ = (u.amax(1, keepdim=True) > 0).float()
        # emitters are binary (a > 0), at full strength Z; their gradient is the sigmoid's (straight-through)
        soft = torch.sigmoid(a)
        emit = (a > 0).float() + soft - soft.detach()
        s = self.ceiling(u) * emit * open_
        cost = self.cost_min + (self.cost_max - self.cost_min) * torch.sigmoid(k)
        return s, cost, open_

    def bind(self, u, conditioning=None):
        """z -> z' for input u. The input enters through the emitters, costs and open mask (the rule's own
        injection, computed once per solve); `conditioning` is accepted for the rule protocol and unused. The
        bound step carries its fields (`step.fields`) for the structured solver (tasks/maze/wavefront.py)."""
        s, cost, open_ = self.fields(u)
        top = self.ceiling(u)
        apply = self._compiled or _step

        def step(y):
            return apply(y, s, cost, open_, top)
        step.fields = (s, cost, open_, top)
        step.structure = "geodesic"
        return step

    _compiled = None

    def compile_for_eval(self) -> None:
        """torch.compile the step for long test-time solves: one fused pass instead of ~8 passes over the state;
        max, subtract and clip round alike, so the states are the same bit for bit (tests/test_mazes.py). Not
        faster at 59x59 on a CPU (benchmarks/geodesic_solve.py); not for training."""
        self._compiled = torch.compile(_step, dynamic=False)

    def features(self, y):
        """Scale-free view of a state for a read-out: neighbour differences / cost_max, clipped to [−2, 2]."""
        return neighbour_features(y, self.cost_max)
