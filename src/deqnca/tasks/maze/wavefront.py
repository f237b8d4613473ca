"""The `wavefront` solver: Picard iteration of a max-plus maze rule (geodesic, trace) evaluated only where the
state can change: Picard's states, step counts and fixed point, bit for bit, for a small part of the work.

Picard's flood moves one pixel per step and every step evaluates every pixel: a 201×201 maze takes ~14,000
full-image steps, an 801×801 one ~130,000. But an element's next value depends only on the state at its pixel's
four neighbours (a trace's gates: and at its pixel) and on fields that do not change: where none of those
changed in the last step, its next value is the one it has. So after one dense step (`f` itself) each round
evaluates only the open elements whose inputs changed in the round before, by the dense step's float arithmetic
in its order (the neighbour max, minus the cost, the max with the emitter, the clamp to [0, Z]; for a trace, the
gate comparisons f(q) > 0 and f(q) == f(p) − K(q)): each round is one Picard step, bit for bit. `nstep` is then
what `fixed_point` reports with ``check_every=1`` (the first step whose state equals the one before),
`sample_steps` each maze's, and a solve cut off by `max_iter` returns `fixed_point`'s state.

The trace rule is stepped whole, floods and traces in the same rounds: a trace element is evaluated again where
its trace changed at a neighbour or the flood it follows changed at its pixel or a neighbour. Floods first, then
the traces with the gates fixed, ends at the same fixed point (it is unique, trace.py) a little faster, but its
step count is not Picard's (1,778 steps against Picard's 1,246 on a 59×59 maze).

The rounds run in numpy on one flat array (channels last, the image padded with a ring of zeros, which is what
the dense step's padding reads): ~25 small numpy calls a round whatever the image's size, tens of µs of one
core; a CUDA batch is solved on the CPU and moved back. A max-first Dijkstra (heapq, the same float32
subtraction) reaches the same fixed point but pays Python work per pixel: slower already at 201×201, where
the rounds finish all 8 geodesic channels in the time it takes for one or two (docs/mazes.md).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from deqnca.core.solvers import SolveStats, register_solver, residuals
from deqnca.tasks.maze.trace import DIRECTIONS, pairs

NEEDS_STRUCTURE = "the wavefront solver needs a max-plus maze rule (geodesic, trace); use fixed_point"
STRUCTURES = ("geodesic", "trace")


class _Grid:
    """States (B, C, H, W) as one flat array, channels last (a pixel's channels share a cache line: a trace
    reads its flood at the same pixel), the image padded with a ring of zeros: a pixel's neighbours are at
    fixed offsets, and the ring reads 0 as the dense step's zero padding does."""

    def __init__(self, shape):
        self.B, self.C, self.H, self.W = shape
        self.Wp = self.W + 2
        self.block = (self.H + 2) * self.Wp * self.C             # one sample's elements
        self.offsets = np.array([(dr * self.Wp + dc) * self.C for dr, dc in DIRECTIONS])

    def pad(self, t, value=0):
        t = F.pad(t.expand(self.B, self.C, self.H, self.W), (1, 1, 1, 1), value=value)
        return t.detach().cpu().permute(0, 2, 3, 1).contiguous().numpy().reshape(-1)

    def unpad(self, a, device):
        pixels = a.reshape(self.B, self.H + 2, self.Wp, self.C)[:, 1:-1, 1:-1]
        return torch.from_numpy(pixels.copy()).permute(0, 3, 1, 2).contiguous().to(device)

    def changes(self, new, old):
        """Flat indices (sorted) of the elements where two states (B, C, H, W) differ."""
        return np.flatnonzero(self.pad(new != old, False))


class _Fields:
    """What a round reads besides the state, per element: the cost of stepping onto its pixel, its emitter,
    whether its pixel is open (walls and the ring are constant after the dense step and never evaluated)."""

    def __init__(self, grid, cost, emit, open_, top, dtype):
        self.cost = grid.pad(cost).astype(dtype, copy=False)
        self.emit = grid.pad(emit).astype(dtype, copy=False)
        self.live = grid.pad(open_ != 0, False)
        self.top = dtype.type(top)
        self.zero = dtype.type(0)


def _unique(a):
    """The distinct values of an int array, sorted (np.unique without its overhead: ~4x faster on the
    few hundred candidates of a round, which is most of a round's time)."""
    a.sort()
    keep = np.empty(a.size, bool)
    keep[:1] = True
    np.not_equal(a[1:], a[:-1], out=keep[1:])
    return a[keep]


class _Flood:
    """The geodesic rule's rounds: a pixel reads its four neighbours in its own channel."""

    def __init__(self, y, grid, fields):
        self.y, self.fields = y, fields
        self.offsets = grid.offsets[:, None]         # (4, 1): one gather reads the four neighbours of n elements

    def candidates(self, changed):
        """The elements whose inputs `changed` holds (before the open filter; repeats allowed)."""
        return (self.offsets + changed).reshape(-1)

    def read(self, c):
        """The dense step's `_neighbour_max` at the candidates (the ring reads 0 as its padding does)."""
        q = self.y[self.offsets + c]
        return np.maximum(np.maximum(q[0], q[1]), np.maximum(q[2], q[3]))


class _Trace(_Flood):
    """The trace rule's rounds: floods as the geodesic's; a trace element of pair (c, d) reads its neighbours'
    traces through gates that read flood c at itself and at its neighbours (trace.py), so it is also
    re-evaluated where flood c changed at its pixel or a neighbour."""

    def __init__(self, y, grid, fields, floods):
        super().__init__(y, grid, fields)
        self.channels, self.floods = grid.C, floods
        follow = np.array([c for c, _ in pairs(floods)])
        traces = np.arange(floods, grid.C)
        # element shift from a trace to the flood it follows, and from a flood to its traces (the same pixel)
        self.to_flood = np.concatenate([np.zeros(floods, np.int64), follow - traces])
        self.to_traces = np.stack([traces[follow == c] - c for c in range(floods)])
        self.around = np.concatenate([[0], grid.offsets])[None, None]

    def channel(self, i):
        return i % self.channels

    def candidates(self, changed):
        near = super().candidates(changed)
        f = changed[self.channel(changed) < self.floods]
        if not f.size:
            return near
        traces = ((f[:, None] + self.to_traces[self.channel(f)])[:, :, None] + self.around).reshape(-1)
        traces = traces[self.fields.live[traces]]          # (open pixels' neighbours lie inside the ring)
        # a trace whose neighbours' traces are all 0 reads 0 whatever its gates, as it did a step before unless
        # one of them changed, which makes it a candidate anyway: only the others can change by a new gate
        traces = traces[self.y[self.offsets + traces].any(0)]
        return np.concatenate([near, traces]) if traces.size else near

    def read(self, c):
        is_flood = self.channel(c) < self.floods
        if is_flood.all():
            return super().read(c)
        m = np.empty(c.size, self.y.dtype)
        m[is_flood] = super().read(c[is_flood])
        t = c[~is_flood]
        m[~is_flood] = self.gated(t, t + self.to_flood[self.channel(t)])
        return m

    def gated(self, t, f):
        """The dense step's `gated_neighbour_max` at trace elements t, f the elements of their floods: max(0,
        t(q) over the neighbours q with f(q) > 0 and f(q) = f(p) - K(q)), by the same comparisons."""
        y, near = self.y, self.offsets + t                 # (4, n): the four directions at once
        fq = y[self.offsets + f]
        gate = (fq > 0) & (fq == y[f] - self.fields.cost[near])
        q = np.where(gate, y[near], self.fields.zero)
        return np.maximum(np.maximum(self.fields.zero, np.maximum(q[0], q[1])), np.maximum(q[2], q[3]))


def _rounds(rule, changed, grid, budget):
    """Picard steps 2, 3, ... on the flat state `rule.y` (in place), `changed` the elements step 1 (the dense
    one) changed; each step evaluates only the open elements whose inputs changed in the step before. Stops at
    the first step that changes nothing or at step `budget`. Returns (the last step taken, the last step at
    which each sample changed (0: never), whether it stopped at the fixed point)."""
    last = np.zeros(grid.B, np.int64)
    if changed.size:
        last[np.unique(changed // grid.block)] = 1
    y, fields = rule.y, rule.fields
    cost, emit, live, zero, top = fields.cost, fields.emit, fields.live, fields.zero, fields.top
    step = 1
    while changed.size and step < budget:
        step += 1
        cand = rule.candidates(changed)
        cand = _unique(cand[live[cand]])
        # the dense step's arithmetic in its order; open(p) = 1 here, and 1 * x is x
        v = rule.read(cand)
        v -= cost[cand]
        np.maximum(v, emit[cand], out=v)
        np.maximum(v, zero, out=v)
        np.minimum(v, top, out=v)
        moved = v != y[cand]
        changed = cand[moved]
        y[changed] = v[moved]
        if changed.size:
            last[changed // grid.block if grid.B > 1 else 0] = step
    return step, last, not changed.size


def _fields(f, grid, dtype):
    """The per-element fields of bound step f, checked; built once per step and batch (the accuracy curve of
    `maze eval` solves the same mazes again from each of its marks)."""
    cache = getattr(f, "__dict__", {}).setdefault("_wavefront", {})
    key = (grid.B, dtype)
    if key not in cache:
        s, cost, open_, top = (v.detach().cpu() if torch.is_tensor(v) else v for v in f.fields)
        if not bool(((open_ == 0) | (open_ == 1)).all()):
            raise ValueError("the wavefront solver needs a binary open mask (0 on walls, 1 on open pixels)")
        if f.structure == "trace":              # the traces emit at the emitters of the flood they start from
            s = torch.cat([s, s[:, [d for _, d in pairs(s.shape[1])]]], 1)
        cache[key] = _Fields(grid, cost, s, open_, top, dtype)
    return cache[key]


def _met_at(steps, last, done):
    """Per sample: the step at which Picard's state first equals the one before (its last change + 1), as
    `fixed_point`'s `sample_steps`; -1 where the budget cut the solve off before."""
    met = torch.from_numpy(last + 1)
    return met if done else torch.where(torch.from_numpy(last) < steps, met, torch.full_like(met, -1))


@torch.no_grad()
def wavefront(f, z0, max_iter: int, tol: float = 1e-12, stop_mode: str = "rel", **_):
    """Picard iteration of a max-plus maze rule to its fixed point, bit for bit, evaluating only where the state
    can change (module docstring). `f` is a rule's bound step carrying ``f.fields`` and ``f.structure``
    ("geodesic" or "trace": `GeodesicRule.bind`, `TraceRule.bind`); `z0` the initial state (B, C, H, W). At
    most `max_iter` evaluations of the map, as `fixed_point`: a solve cut off by it returns Picard's state
    after max_iter − 1 steps. It does not stop at `tol` but at the exact fixed point; `tol` only decides, as
    in `fixed_point`, whether a cut-off sample counts as met in `sample_steps`.

    Returns (z, SolveStats): `nstep` Picard's steps, the residuals measured by one dense step of `f` at z (0 at
    the fixed point), `sample_steps` each sample's steps; all as `fixed_point` with ``check_every=1``."""
    if getattr(f, "structure", None) not in STRUCTURES or not hasattr(f, "fields"):
        raise ValueError(NEEDS_STRUCTURE)
    grid = _Grid(z0.shape)
    dtype = np.dtype(str(z0.dtype).removeprefix("torch."))
    fields = _fields(f, grid, dtype)
    if max_iter < 2:        # fixed_point keeps z0 when it may evaluate f only once
        z, (steps, last, done) = z0, (1, np.ones(grid.B, np.int64), False)
    else:
        z1 = f(z0)
        y = grid.pad(z1).astype(dtype, copy=False)
        rule = _Trace(y, grid, fields, f.fields[0].shape[1]) if f.structure == "trace" else _Flood(y, grid, fields)
        steps, last, done = _rounds(rule, grid.changes(z1, z0), grid, max_iter - 1)
        z = grid.unpad(y, z0.device)
    a, r = residuals(f(z), z)
    met = _met_at(steps, last, done)
    met = torch.where(((r if stop_mode == "rel" else a) < tol).cpu() & (met < 0), max_iter, met)
    return z, SolveStats(steps if done else max_iter, a, r, [], sample_steps=met.to(z0.device))


register_solver("wavefront", wavefront)
