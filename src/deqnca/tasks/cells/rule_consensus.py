"""A self-classifying rule whose cells reach consensus at a unique fixed point: a contraction for local
features, and a max-plus flood that carries the strongest evidence across the digit undamped.

The state of an alive cell has two parts: local features z (C channels) and evidence y (E channels).

    z' = m ⊙ tanh(Ŵ_z * (m ⊙ z) + b(x))                       the contraction of rule_equilibrium.py
    s  = tanh(V z + c)                                          each cell's evidence, from its own features
    y'(p) = clip(max(s(p), max_{q ∈ N(p), alive} y(q) − ε), −1, 1)   on alive cells (0 on dead cells)

and each cell reads its label from its own y through a per-cell head (1×1 convolutions).

**Unique fixed point, reached from any state.** z has one fixed point z* (Banach: ‖Ŵ_z‖ ≤ γ < 1, tanh
1-Lipschitz, the mask never increases a norm); it fixes s* = tanh(V z* + c). Given s*, the flood has one
fixed point, y*(p) = max over the alive cells q of p's 8-connected piece of s*(q) − ε·d(p, q) (d the
number of steps from q to p through alive cells): where two fixed points differ most, the larger must
come from a neighbour with a gap as large and a value larger by ε, a chain that cannot go on in a finite
grid (tasks/maze/geodesic.py has the same argument). From any state, y's excess over y* drains by ε per step
once z has settled (at most 2/ε steps: y is clipped to [−1, 1], where y* lies), and a deficit fills at
one cell per step.

**Why the flood escapes the contraction's reach.** A γ-contraction passes at most γ^d of what a cell d
steps away says (docs/cells.md measured this model family's reach: a few cells). The flood passes it
exactly, minus ε·d: every cell of a digit sees (almost) the digit-wide maximum of each evidence channel —
a global max-pool of learned local features, computed by a local rule, which is what a per-cell label
needs; and the cells of one piece see nearly the same y, so they agree. A piece cut off from the rest
of its digit (2.95% of the test digits have one) sees only its own evidence.

**Confirmed evidence (`confirm=2`).** The max-plus flood lets one cell speak for its whole piece: set one
cell's y to a wrong label's value and every cell within reach takes it, minus ε per step, until it drains
(docs/cells.md measures this attack). With `confirm=2` a cell hears the *second* largest of its alive
neighbours' y instead: one cell's value is never the second largest of any neighbourhood, so it reaches no
one. The fixed point stays unique: where two fixed points differ most (gap g at p, from the neighbours),
p's second-largest neighbour drops by exactly g, so one of p's two largest neighbours has gap g and a value
larger by ε — the same endless chain. What it costs: along a stroke one cell wide (two alive neighbours) a
cell hears only the smaller side. **`reach=2`** widens the flood's neighbourhood to the 5×5 around a cell (24
neighbours; the contraction still reads 3×3): along a thin stroke the two cells behind a cell on one side
confirm each other's evidence, and cells up to two apart (across a one-cell gap) exchange it. One cell's
value is still never the second largest of a neighbourhood, and the argument above holds with d counted in
5×5 hops.

**Solved by blocks.** z does not read y, so `equilibrium` solves z alone (a few solver steps: the joint
solve spent most of its ~90 on y draining by ε per step while s settled), computes s*, then floods once
from y = −1, exactly, remembering for each cell and channel the cell its maximum came from. Then
y*(p) = s*(src(p)) − ε·d(p, src(p)), so the exact gradient of y* with respect to s* is a gather, and only
z needs the implicit backward. Same fixed point and gradient as the joint solve (tests), ~4× less time
per training step (benchmarks/consensus_solve.py, docs/cells.md).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from deqnca.tasks.cells.rule_equilibrium import ContractiveCellsRule, _apply, _apply_dilated

_DEAD = -10.0      # what a dead neighbour offers the flood: below any evidence (s ∈ (−1, 1))


def neighbours(reach: int = 1) -> list:
    """The offsets (dy, dx) of a cell's neighbours within Chebyshev distance `reach`, in F.unfold's row-major
    order, the cell itself left out (8 for reach 1, 24 for reach 2)."""
    return [(dy, dx) for dy in range(-reach, reach + 1) for dx in range(-reach, reach + 1) if (dy, dx) != (0, 0)]


_NEIGHBOURS = neighbours(1)


def second_largest_neighbour(v, reach: int = 1):
    """(values, which): the second largest of each cell's neighbours within `reach` in v (B, E, H, W), and
    which neighbour holds it (an index into `neighbours(reach)`); outside the grid counts as a dead cell."""
    b, e, h, w = v.shape
    k = 2 * reach + 1
    patches = F.unfold(F.pad(v.reshape(b * e, 1, h, w), (reach,) * 4, value=_DEAD), k).view(b, e, k * k, h, w)
    centre = k * k // 2
    top = torch.cat([patches[:, :, :centre], patches[:, :, centre + 1:]], 2).topk(2, dim=2)
    return top.values[:, :, 1], top.indices[:, :, 1]


def second_largest_neighbour_value(v, reach: int = 1):
    """The values of `second_largest_neighbour` alone, as a running top two over the shifted grids: a few
    elementwise maxima instead of a sort of every neighbourhood (the flood's inner loop)."""
    h, w = v.shape[-2:]
    padded = F.pad(v, (reach,) * 4, value=_DEAD)
    first, second = None, torch.full_like(v, _DEAD)
    for dy, dx in neighbours(reach):
        u = padded[..., reach + dy:reach + dy + h, reach + dx:reach + dx + w]
        if first is None:
            first = u
        else:
            second, first = torch.maximum(second, torch.minimum(first, u)), torch.maximum(first, u)
    return second


def _neighbour_values(y, alive, confirm: int, reach: int = 1):
    """What the flood offers each cell: the largest (confirm 1) or second largest (confirm 2) alive neighbour
    within `reach` (the largest's window holds the cell too: its own value, less ε, never wins)."""
    masked = torch.where(alive, y, torch.full_like(y, _DEAD))
    return F.max_pool2d(masked, 2 * reach + 1, 1, reach) if confirm == 1 \
        else second_largest_neighbour_value(masked, reach)


def _flood(y, s, alive, eps: float, confirm: int = 1, reach: int = 1):
    offered = _neighbour_values(y, alive, confirm, reach)
    # clamped to [-1, 1], where y* lies (s does): the fixed point is unchanged and a state from anywhere
    # drains to it within 2/eps steps
    return torch.where(alive, torch.maximum(s, offered - eps).clamp(-1.0, 1.0), torch.zeros_like(y))


def _sources(y, s, alive, eps: float, confirm: int, reach: int = 1):
    """At the flood's fixed point y: for each cell, the alive cell whose evidence its value is. Each cell
    points at itself (its own evidence wins) or at the neighbour it hears; values rise by ε along every
    pointer, so the chains end, and pointer doubling follows them in log₂(length) gathers."""
    b, e, h, w = s.shape
    own = torch.arange(h * w, device=s.device).view(1, 1, h, w).expand(b, e, h, w)
    masked = torch.where(alive, y, torch.full_like(y, _DEAD))
    if confirm == 1:
        offered, at = F.max_pool2d(masked, 2 * reach + 1, 1, reach, return_indices=True)
    else:   # where fewer than 2 neighbours are alive the value is _DEAD and the cell's own evidence wins
        offered, which = second_largest_neighbour(masked, reach)
        offsets = torch.tensor([dy * w + dx for dy, dx in neighbours(reach)], device=s.device)
        at = (own + offsets[which]).clamp(0, h * w - 1)
    src = torch.where(alive & (s < offered - eps), at, own).flatten(2)
    while True:
        further = torch.gather(src, 2, src)
        if torch.equal(further, src):
            return src.view(b, e, h, w)
        src = further


def flood_with_sources(s, alive, eps: float, max_iter: int | None = None, confirm: int = 1, reach: int = 1):
    """The flood's exact fixed point for fixed evidence s, from y = −1 on alive cells (0 on dead ones).

    Returns (y*, src, steps): src[b, e, p] is the flat index of the alive cell whose evidence y*[b, e, p]
    is (y* = s*(src) − ε·distance), and steps the number of flood steps until y stopped changing. The
    rise from −1 is monotone (so is the map, for either `confirm`) and ends, bit for bit, within one step
    per cell: every value is some s(q) − kε, reached along a chain of distinct cells; the sources are
    found once, at the end (`_sources`)."""
    alive = alive.expand_as(s)
    y = torch.where(alive, torch.full_like(s, -1.0), torch.zeros_like(s))
    max_iter = max_iter or s.shape[-2] * s.shape[-1] + 1
    for k in range(max_iter):
        offered = _neighbour_values(y, alive, confirm, reach)
        y_next = torch.where(alive, torch.maximum(s, offered - eps), torch.zeros_like(s))
        if torch.equal(y_next, y):
            return y, _sources(y, s, alive, eps, confirm, reach), k + 1
        y = y_next
    raise RuntimeError(f"the flood did not settle in {max_iter} steps (it takes at most one per cell)")


def _apply_consensus(state, m, w, b, v, c, eps: float, channels: int, dilations, confirm: int = 1,
                     reach: int = 1):
    z, y = state[:, :channels], state[:, channels:]
    z_next = _apply_dilated(z, m, w, b, dilations) if len(dilations) > 1 else _apply(z, m, w, b)
    s = torch.tanh(F.conv2d(z, v, c))
    return torch.cat([z_next, _flood(y, s, m > 0, eps, confirm, reach)], dim=1)


class ConsensusCellsRule(ContractiveCellsRule):
    """Local features by a contraction, evidence spread by a max-plus flood (module docstring)."""

    def __init__(self, evidence: int = 32, eps: float = 0.02, head_hidden: int = 32, classes: int = 10,
                 confirm: int = 1, reach: int = 1, **kw):
        if not eps > 0:
            raise ValueError(f"eps must be > 0 (the flood's fixed point is unique only then), got {eps}")
        if confirm not in (1, 2):
            raise ValueError(f"confirm {confirm!r}: 1 (the largest neighbour) or 2 (the second largest)")
        if reach not in (1, 2, 3):
            raise ValueError(f"reach {reach!r}: the flood's neighbourhood, 1 (3×3), 2 (5×5) or 3 (7×7)")
        super().__init__(head_hidden=0, classes=classes, **kw)
        self.evidence, self.eps, self.confirm, self.reach = evidence, eps, confirm, reach
        self.head = None
        self.to_evidence = nn.Conv2d(self.state_channels, evidence, 1)
        layers = [nn.Conv2d(evidence, head_hidden, 1), nn.ReLU(), nn.Conv2d(head_hidden, classes, 1)] \
            if head_hidden else [nn.Conv2d(evidence, classes, 1)]
        self.read = nn.Sequential(*layers)

    def initial_state(self, x: torch.Tensor) -> torch.Tensor:
        """Features 0; evidence −1 on the alive cells, y's lower bound, so that the flood only rises, one
        cell per step (from 0 it would first drain by ε per step towards a negative y*); dead cells 0.
        Any start reaches the same fixed point; this one in the fewest steps."""
        z = x.new_zeros(x.shape[0], self.state_channels + self.evidence, *x.shape[2:])
        z[:, self.state_channels:] = -self.alive(x).to(x.dtype)
        return z

    def _maps(self, x: torch.Tensor):
        """(joint map, z's map) on input x, from one normalisation of the weights."""
        m = self.alive(x).to(x.dtype)
        b, w = self.drive(x), self.state_weight()
        apply = self._compiled or _apply_consensus
        v, c, dil = self.to_evidence.weight, self.to_evidence.bias, self.dilations
        joint = lambda state: apply(state, m, w, b, v, c, self.eps, self.state_channels, dil,  # noqa: E731
                                    self.confirm, self.reach)
        z_map = (lambda z: _apply_dilated(z, m, w, b, dil)) if len(dil) > 1 else (lambda z: _apply(z, m, w, b))
        return joint, z_map

    def step_map(self, x: torch.Tensor, generator: torch.Generator | None = None):
        """The map (z, y) -> (z', y') on input x; deterministic, so also the expected map."""
        return self._maps(x)[0]

    expected_map = step_map

    def equilibrium(self, x: torch.Tensor, solve, strategy=None, max_iter: int = 60, tol: float = 1e-4):
        """The fixed point (z*, y*) solved by blocks (module docstring), differentiable when `strategy` (a
        gradient strategy, gradients.py) is given and grad is on. Returns (state, SolveStats) with nstep
        = z's solver steps + flood steps and the residual of the joint map at the returned state."""
        from deqnca.core.solvers import SolveStats, residuals

        joint, z_map = self._maps(x)
        z0 = x.new_zeros(x.shape[0], self.state_channels, *x.shape[2:])
        z, stats = strategy(z_map, solve, z0, max_iter=max_iter, tol=tol) if strategy is not None \
            else solve(z_map, z0, max_iter=max_iter, tol=tol)
        s = torch.tanh(F.conv2d(z, self.to_evidence.weight, self.to_evidence.bias))
        alive = self.alive(x)
        with torch.no_grad():
            y, src, steps = flood_with_sources(s.detach(), alive, self.eps, confirm=self.confirm, reach=self.reach)
        picked = torch.gather(s.flatten(2), 2, src.flatten(2)).view_as(s)
        y = torch.where(alive, y + (picked - picked.detach()), torch.zeros_like(y))   # value y*, gradient of s*(src)
        state = torch.cat([z, y], dim=1)
        with torch.no_grad():
            abs_r, rel_r = residuals(joint(state.detach()), state.detach())
        return state, SolveStats(stats.nstep + steps, abs_r, rel_r, fallback=stats.fallback)

    def compile_for_eval(self) -> None:
        """Compile the map with torch.compile for long evaluations (float rounding differs, nothing else)."""
        self._compiled = torch.compile(_apply_consensus, dynamic=False)

    def logits(self, state: torch.Tensor) -> torch.Tensor:
        """(B, classes, H, W): each cell's label scores from its own evidence y."""
        return self.read(state[:, self.state_channels:])
