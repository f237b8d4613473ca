"""The trace rule: floods from learned emitters (the geodesic rule's) plus *traces* that run back down them: a
max-plus cellular automaton whose unique fixed point marks every cell that lies on a cheapest walk between the
emitters of two floods. With one flood emitted at the start and one at the goal, that set is exactly the
shortest path when it is unique — whether or not the maze has loops.

State: P flood channels f_c, then one trace t_cd for every ordered pair of distinct floods (c, d): P² channels.
One step:

    f'_c(p)  = clip(max(s_c(p), open(p) · (max_{q ∈ N4(p)} f_c(q) − K(p))), 0, Z)          (the geodesic flood)
    t'_cd(p) = clip(max(s_d(p), open(p) · (max_{q ∈ N4(p), g_c(p,q)} t_cd(q) − K(p))), 0, Z)
    g_c(p, q) = [f_c(q) > 0 and f_c(q) = f_c(p) − K(q)]   (q's flood value came from p: p is q's predecessor)

so t_cd starts at the emitters of flood d and runs back down flood c towards c's emitters. s_c: all-or-nothing
emitters of strength Z where a learned 1x1 convolution of the cell's colour is positive (straight-through, as
the geodesic rule); K(p) ∈ [cost_min, cost_max] the learned cost of stepping onto p. The traces add no
parameters: the rule learns which colours emit in each flood and what a step costs, 4(P + 1) numbers.

**Unique fixed point, reached exactly from any state.** The floods do not read the traces: they are the
geodesic rule, whose fixed point is unique and reached in finitely many steps (geodesic.py). Once they are
there the gates are fixed, and each trace is a max-plus flood over the gated graph whose every step subtracts
at least cost_min: by the geodesic argument its fixed point is unique and reached after finitely many more
steps. The gate compares floats computed by the same subtraction as the flood's, so at the fixed point it
holds exactly (bit for bit) on every edge a cheapest walk uses, and on no other.

**What the read-out can see.** t*_cd(p) > 0 exactly on the cells of cheapest walks from an emitter of f_c to an
emitter of f_d (the emitters of f_d included). The read-out sees, per channel, whether the cell was reached
(y > 0) and the neighbour differences of the geodesic read-out (both scale-free).

**The grid it runs on.** A maze image of the easy-to-hard benchmark is its layout upsampled 2x with a 1-pixel
border; on the pixel grid, walks that hug the inside of corners are shorter than walks through the layout's
cells, so a pixel flood measures a different metric from the maze's and picks the wrong route when the maze
has loops (a turning route of more cells can have fewer pixels). The trace model therefore reads the image
at the layout's resolution (the mean of each 2x2 block inside the border) and paints its answer back on the
blocks (`MazeSolverNet`, model "trace"): an assumption about the input's format, stated in docs/mazes.md.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from deqnca.core.rules import RULES
from deqnca.tasks.maze.geodesic import _neighbour_max, neighbour_features

# (row, column) offset of the neighbour q of p in each of the four directions
DIRECTIONS = ((-1, 0), (1, 0), (0, -1), (0, 1))


def _shifted(y, dr: int, dc: int):
    """y at the neighbour (p + (dr, dc)) of every pixel p, reading 0 beyond the border."""
    p = F.pad(y, (1, 1, 1, 1))
    h, w = y.shape[-2:]
    return p[..., 1 + dr:1 + dr + h, 1 + dc:1 + dc + w]


def gated_neighbour_max(t, f, cost):
    """max over the neighbours q of p whose flood value came from p (f(q) > 0, f(q) = f(p) − K(q)) of t(q);
    0 where there is none. t, f: (B, C, H, W); cost: (B, 1, H, W)."""
    out = torch.zeros_like(t)
    for dr, dc in DIRECTIONS:
        fq, kq = _shifted(f, dr, dc), _shifted(cost, dr, dc)
        gate = (fq > 0) & (fq == f - kq)
        out = torch.maximum(out, torch.where(gate, _shifted(t, dr, dc), 0.0))
    return out


@torch.no_grad()
def emit_at_start_and_goal(rule) -> None:
    """Set a `TraceRule`'s encoder by hand: flood 0 emits at the start's colour (0, 1, 0), flood 1 at the goal's
    (1, 0, 0), the others nowhere, every cell costs the same; trace (0, 1) then marks the shortest start-to-goal
    paths with no training (the reference model of the tests, the benchmarks and the live page's tests)."""
    w, b = rule.encode.weight, rule.encode.bias
    w.zero_()
    b.fill_(-1.0)
    w[0, :, 0, 0] = torch.tensor([-2.0, 2.0, -2.0])
    w[1, :, 0, 0] = torch.tensor([2.0, -2.0, -2.0])


def pairs(floods: int) -> list[tuple[int, int]]:
    """The ordered pairs (c, d) of distinct floods, in the order of the trace channels."""
    return [(c, d) for c in range(floods) for d in range(floods) if c != d]


def trace_step(y, s, cost, open_, top: float, follow, emit_from):
    """One step of the trace rule on state y = [floods, traces] (module docstring); `follow` and `emit_from` index
    the flood each trace runs down and the flood whose emitters it starts from."""
    floods = s.shape[1]
    f, t = y[:, :floods], y[:, floods:]
    f_new = torch.maximum(s, open_ * (_neighbour_max(f) - cost)).clamp(0, top)
    t_new = torch.maximum(s[:, emit_from], open_ * (gated_neighbour_max(t, f[:, follow], cost) - cost)).clamp(0, top)
    return torch.cat([f_new, t_new], 1)


@RULES.register("trace")  # geodesic floods plus traces back down them: unique fixed point, no contraction
class TraceRule(nn.Module):
    """Floods and the traces between them (module docstring): `floods` = P, P² state channels."""

    def __init__(self, input_channels: int = 3, floods: int = 4, cost_min: float = 1.0, cost_max: float = 2.0):
        super().__init__()
        if floods < 2:
            raise ValueError(f"trace rule: need at least 2 floods (a trace runs between two), got {floods}")
        if not 0 < cost_min <= cost_max:
            raise ValueError(f"trace rule: need 0 < cost_min <= cost_max, got {cost_min}, {cost_max}")
        self.input_channels, self.floods = input_channels, floods
        self.state_channels = floods * floods
        self.cost_min, self.cost_max = cost_min, cost_max
        follow, emit_from = zip(*pairs(floods))
        self.register_buffer("follow", torch.tensor(follow), persistent=False)
        self.register_buffer("emit_from", torch.tensor(emit_from), persistent=False)
        # a cell's colour -> an emission logit per flood and one cost logit
        self.encode = nn.Conv2d(input_channels, floods + 1, 1)

    def ceiling(self, u) -> float:
        """Z: larger than the cost of any walk through the grid, the emitters' strength."""
        return self.cost_max * u.shape[-2] * u.shape[-1]

    def steps_bound(self, height: int, width: int) -> int:
        """Picard steps within which any state in [0, Z] reaches the fixed point: the floods' bound (the geodesic
        rule's), then the traces', each at most (cost_max / cost_min) · H · W + 1."""
        return 2 * (math.ceil(self.cost_max / self.cost_min * height * width) + 1)

    def fields(self, u):
        """(emitters s (B, P, H, W), costs K (B, 1, H, W), open mask (B, 1, H, W)) of input u."""
        a, k = self.encode(u).float().split([self.floods, 1], dim=1)
        open_ = (u.amax(1, keepdim=True) > 0).float()
        soft = torch.sigmoid(a)
        # all or nothing at strength Z, with the gradient of a unit-strength sigmoid emitter (straight-through): the
        # geodesic rule's Z-scaled gradient dominated the clipped gradient norm; soft - soft.detach() is exactly 0
        s = (self.ceiling(u) * (a > 0).float() + soft - soft.detach()) * open_
        cost = self.cost_min + (self.cost_max - self.cost_min) * torch.sigmoid(k)
        return s, cost, open_

    def bind(self, u, conditioning=None):
        """z -> z' for input u (the layout-resolution maze); `conditioning` is accepted for the rule protocol and
        unused. The bound step carries its fields (`step.fields`) for the structured solver."""
        s, cost, open_ = self.fields(u)
        top = self.ceiling(u)
        follow, emit_from = self.follow, self.emit_from

        def step(y):
            return trace_step(y, s, cost, open_, top, follow, emit_from)
        step.fields = (s, cost, open_, top)
        step.structure = "trace"
        return step

    def features(self, y):
        """What the read-out sees: per channel, reached (y > 0), and the neighbour differences / cost_max. The
        reached bit passes y / Z's gradient (straight-through), so that an emitter learns from every cell its
        flood reaches, not only where two floods meet (where the differences have a gradient)."""
        scaled = y / self.ceiling(y)
        reached = (y > 0).to(y.dtype) + scaled - scaled.detach()
        return torch.cat([reached, neighbour_features(y, self.cost_max)], 1)
