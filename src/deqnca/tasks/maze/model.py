"""The maze solver-nets: DT-recall (rollout + BPTT), the maze DEQ (the same recall rule, bounded,
solved to its fixed point), both a `RecallRule` bound to the maze by input injection, and the geodesic
model (a `GeodesicRule` max-plus flood, unique fixed point; its read-out sees neighbour differences);
each with a solver, a gradient strategy and the per-pixel `ConvHead` read-out."""
from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from torch import nn

from deqnca.core.conditioning import make_conditioning
from deqnca.core.gradients import make_gradient
from deqnca.core.model import MODELS, CellularModel
from deqnca.core.readout import DIHEDRAL, ConvHead, dihedral_mean
from deqnca.core.rules import make_rule
from deqnca.core.solvers import get_solver, residuals, rollout

# they register their rules, and the wavefront solver
from deqnca.tasks.maze import geodesic, recall, trace, wavefront  # noqa: F401
from deqnca.tasks.maze.generate import to_images
from deqnca.tasks.maze.geodesic import NeighbourFeatures
from deqnca.tasks.maze.model_config import NETS, MazeNetConfig  # noqa: F401  (re-exported)

EXACT = ("geodesic", "trace")     # max-plus rules: a unique fixed point, reached exactly


def check_readout_symmetry(model: str, symmetry: str) -> None:
    if symmetry not in DIHEDRAL:
        raise ValueError(f"readout_symmetry {symmetry!r}: choose one of {', '.join(DIHEDRAL)}")
    if symmetry != "none" and model not in EXACT:
        raise ValueError(f"readout_symmetry {symmetry!r} is for the geodesic and trace models, whose rules are "
                         f"equivariant; the {model} model's convolutions are not: use none")


def to_cells(x):
    """A benchmark maze image (B, C, H, W) at its layout's resolution: the mean of each 2x2 block inside the
    1-pixel border (`to_images` draws a layout pixel as one such block)."""
    return F.avg_pool2d(x[..., 1:-1, 1:-1], 2)


def to_pixels(logits):
    """Layout-resolution path logits (B, 2, L, L) back on the image (B, 2, 2L + 2, 2L + 2): each cell's logits on
    its 2x2 block, the 1-pixel border read as wall."""
    up = logits.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    wall = up.new_tensor([0.0, -30.0]).view(1, 2, 1, 1)
    out = wall.expand(up.shape[0], 2, up.shape[2] + 2, up.shape[3] + 2).clone()
    out[..., 1:-1, 1:-1] = up
    return out


class TraceHead(nn.Module):
    """The trace model's read-out: what the rule lets it see of each cell (reached or not, neighbour differences:
    `TraceRule.features`) -> per-cell `ConvHead` logits on the layout grid (optionally the mean over the 8
    rotations and reflections, as `GeodesicHead`), painted back on the image's 2x2 blocks."""

    def __init__(self, rule, symmetry: str = "none"):
        super().__init__()
        self.features = rule.features
        self.layers = ConvHead(5 * rule.state_channels, classes=2)
        self.symmetry = symmetry

    def cell_logits(self, z):
        def read(state):
            return self.layers(self.features(state))
        return dihedral_mean(read, z) if self.symmetry == "d4" else read(z)

    def forward(self, z):
        return to_pixels(self.cell_logits(z))


class GeodesicHead(nn.Sequential):
    """The geodesic model's read-out: neighbour differences of the state -> per-pixel `ConvHead` logits. With
    `symmetry` "d4", the mean of its logits over the 8 rotations and reflections of the state. The geodesic rule
    is equivariant to them (a 4-neighbour max and a per-pixel encoder), so this is the mean of the answers to the
    8 rotated and reflected mazes at the price of one solve; a learned head is not equivariant, and its rare
    wrong answers (a junction seen in one orientation) are outvoted (docs/mazes.md)."""

    def __init__(self, width: int, cost_max: float, symmetry: str = "none"):
        super().__init__(NeighbourFeatures(cost_max), ConvHead(4 * width, classes=2))
        self.symmetry = symmetry

    def forward(self, z):
        if self.symmetry == "d4":
            return dihedral_mean(super().forward, z)
        return super().forward(z)


@MODELS.register("maze")
class MazeSolverNet(CellularModel):
    """x (B, 3, H, W) -> per-pixel path logits (B, 2, H, W) at the state the solver reaches.

    The model kind ``"maze"`` (`CellularModel`): `x` is a batch of maze images (B, 3, H, W) (walls,
    start, goal; `to_images`); `step_map` is the rule bound to the maze by input injection; `read` gives
    every pixel's path logits (B, 2, H, W). In training mode `initial_state` is the config's ``init``
    (DT's projection, TorchDeq's mixed noise for the DEQs) and `solve` uses the config's solver and
    gradient; in eval mode (`deqnca.load` returns models in eval mode) they are the test-time ones:
    DT's projection or zeros, and DT's rollout of `max_iter` steps or the fixed-point solve to ``tol``
    (default `max_iter`: `inference_iters`).
    """

    Config = MazeNetConfig

    def __init__(self, config: MazeNetConfig | dict):
        super().__init__()
        if isinstance(config, dict):
            config = MazeNetConfig.from_dict(config)
        if config.model not in NETS:
            raise ValueError(f"maze model {config.model!r}: choose one of {sorted(NETS)}")
        self.config = config
        w = config.width
        check_readout_symmetry(config.model, config.readout_symmetry)
        if config.model == "geodesic":
            self.rule = make_rule("geodesic", input_channels=3, state_channels=w, **config.rule_kw)
            # its state grows with the image: the head reads neighbour differences, which do not
            self.head = GeodesicHead(w, self.rule.cost_max, config.readout_symmetry)
        elif config.model == "trace":
            self.rule = make_rule("trace", input_channels=3, floods=w, **config.rule_kw)
            self.head = TraceHead(self.rule, config.readout_symmetry)
        else:
            self.rule = make_rule("recall", input_channels=3, state_channels=w, blocks=config.blocks,
                                  form=config.model, bound=config.bound)
            self.head = ConvHead(w, classes=2)
        self.conditioning = make_conditioning("injection")
        # DT-recall's first "thought" is a projection of the input; the DEQ starts from zeros/noise
        self.projection = nn.Conv2d(3, w, 3, padding=1, bias=False) if config.init == "projection" else None
        self.gradient = make_gradient(config.gradient, **config.gradient_kw)

    def set_readout_symmetry(self, symmetry: str) -> None:
        """Switch the geodesic read-out's symmetrisation (`GeodesicHead`) on a built or loaded model."""
        check_readout_symmetry(self.config.model, symmetry)
        self.config.readout_symmetry = self.head.symmetry = symmetry

    def step_map(self, x, generator=None):
        """The rule bound to mazes x (deterministic: `generator` is not used); the trace rule runs on the layout's
        grid (`to_cells`)."""
        return self.rule.bind(self.grid_input(x), self.conditioning)

    def grid_input(self, x):
        """The input at the resolution the state lives at: the layout's for the trace model, else the image."""
        return to_cells(x) if self.config.model == "trace" else x

    def read(self, z, x):
        """(B, 2, H, W): every pixel's path logits (`predict` turns them into the path)."""
        return self.head(z)

    @classmethod
    def describe_config(cls, config) -> str:
        return f"maze solver-net ({config.model})"

    def compile_for_eval(self) -> bool:
        """torch.compile the rule's step for test-time solves where the rule offers it (the geodesic rule, whose
        states stay the same bit for bit); False where it does not."""
        if not hasattr(self.rule, "compile_for_eval"):
            return False
        self.rule.compile_for_eval()
        return True

    def initial_state(self, x, generator=None, kind: str | None = None, shard=None):
        """z_0 for mazes x: `kind` ("projection", "zeros" or "mixed"; default: the config's ``init`` in
        training mode, the test-time state in eval mode, `inference_state`). `shard`
        (train/distributed.Shard): x is this process's slice of a global batch; random states are drawn for
        the global batch, as one process draws them, and sliced."""
        kind = kind or (self.config.init if self.training else self._inference_kind())
        shape = (x.shape[0], self.rule.state_channels, *self.grid_input(x[:1, :1]).shape[2:])
        if kind == "projection":
            return F.relu(self.projection(x))
        if kind == "zeros":
            return x.new_zeros(shape)
        if kind == "mixed":
            # TorchDeq's mixed_init (Anil et al. 2022): N(0,1) entries, half of them zeroed; drawn
            # from `generator` so that a resumed run sees the same states
            if shard is not None:
                shape = (shard.size, *shape[1:])
            z = torch.randn(shape, generator=generator, device=x.device)
            z = z * (torch.rand(shape, generator=generator, device=x.device) < 0.5)
            return z if shard is None else shard.take(z)
        raise ValueError(f"initial state {kind!r}: choose projection, zeros or mixed")

    def _inference_kind(self) -> str:
        return "projection" if self.config.init == "projection" else "zeros"

    def solve(self, x, z0=None, generator=None, max_iter: int | None = None, shard=None):
        """(z, stats): in training mode the config's solver from the config's initial state, differentiable by
        its gradient (`max_iter` default: ``train_iters``); in eval mode the test-time solve (`solve_for_eval`,
        `max_iter` default: `inference_iters`)."""
        if not self.training:
            return solve_for_eval(self, x, max_iter or inference_iters(self, *x.shape[2:]), z0)
        f = self.step_map(x)
        z0 = self.initial_state(x, generator=generator, shard=shard) if z0 is None else z0
        kw = {"max_iter": max_iter or self.config.train_iters, "tol": self.config.tol}
        if self.config.solver == "rollout":
            kw["measure"] = False          # no residual evaluation (an extra step) in training
        return self.gradient(f, get_solver(self.config.solver), z0, **kw)

    def inference_state(self, x):
        """The initial state used at test time: DT's projection, or zeros for the DEQ."""
        return self.initial_state(x, kind=self._inference_kind())


def inference_iters(model, height: int, width: int) -> int:
    """Test-time steps for mazes of H×W pixels: enough to cross the image a few times (information moves
    ~5 px per step); for the geodesic model, the rule's guaranteed bound (every maze reaches its fixed point
    exactly within it, and the solver stops there: docs/mazes.md shows how far that is below the bound)."""
    if model is not None and model.config.model in EXACT:
        return model.rule.steps_bound(height, width)
    return max(100, 4 * width)


def predict(logits, x):
    """Path mask (B, H, W): argmax, restricted to open pixels (walls are never path), as DT does."""
    return (logits.argmax(1) == 1) & (x.amax(1) > 0)


def eval_solver_kw(model) -> dict:
    """Test-time fixed-point options: the geodesic rule reaches its fixed point exactly, so its residual (which
    costs twice its step) is checked every 8 steps; the states are the same (tests/test_mazes.py)."""
    return {"check_every": 8} if model.config.model in EXACT else {}


EVAL_SOLVERS = ("fixed_point", "wavefront")
# the geodesic and trace models' test-time solver: the wavefront reaches the same states as fixed_point bit for
# bit, 3-100x faster from 9x9 up, ~200x at 201x201 (tasks/maze/wavefront.py, docs/mazes.md)
EVAL_SOLVER = "wavefront"


def eval_solver(model, solver: str | None = None) -> str:
    """The test-time solver of `model`: `solver`, by default `EVAL_SOLVER` for the geodesic and trace models and
    fixed_point for the others (DT rolls out whatever it is); wavefront only for the max-plus rules."""
    if solver is not None and solver not in EVAL_SOLVERS:
        raise ValueError(f"test-time solver {solver!r}: choose one of {', '.join(EVAL_SOLVERS)}")
    exact = model.config.model in EXACT
    solver = solver or (EVAL_SOLVER if exact else "fixed_point")
    if solver == "wavefront" and not exact:
        raise ValueError(f"solver wavefront is for the geodesic and trace models (max-plus rules), not "
                         f"{model.config.model}: use fixed_point")
    return solver


def solve_for_eval(model, x, max_iter: int, z0=None, solver: str | None = None):
    """Test-time solve: DT rolls out exactly `max_iter` steps; the DEQ iterates until every maze's
    relative residual is below tol (or `max_iter`); the geodesic and trace models by `eval_solver` (the
    wavefront by default: Picard's states, fewer operations)."""
    solver = eval_solver(model, solver)
    f = model.step_map(x)
    z0 = model.inference_state(x) if z0 is None else z0
    if model.config.model == "dt":
        return rollout(f, z0, max_iter, measure=False)
    return get_solver(solver)(f, z0, max_iter=max_iter, tol=model.config.tol, **eval_solver_kw(model))


def _ce(logits, target):
    return F.cross_entropy(logits.float(), target)


def dt_loss(model, x, y, alpha: float, rng: random.Random, generator=None, shard=None):
    """Bansal et al.'s progressive loss: (1-α)·loss after the max iterations
    + α·loss after k iterations from the *detached* state after n random iterations."""
    T = model.config.train_iters
    f = model.step_map(x)
    z0 = model.initial_state(x)
    terms = []
    if alpha < 1:
        z, _ = model.gradient(f, rollout, z0, max_iter=T, measure=False)
        terms.append((1 - alpha) * _ce(model.head(z), y))
    if alpha > 0:
        n = rng.randrange(T)
        k = rng.randint(1, T - n)
        with torch.no_grad():
            zn, _ = rollout(f, z0, n, measure=False)
        z, _ = model.gradient(f, rollout, zn.detach(), max_iter=k, measure=False)
        terms.append(alpha * _ce(model.head(z), y))
    return sum(terms), None


def deq_loss(model, x, y, residual_weight: float, rng: random.Random, generator=None, shard=None):
    """Loss at the equilibrium reached from a mixed zero/noise state within a random budget of
    T/2 .. 2T iterations (Anil et al.'s path-independence aids), plus an optional fixed-point
    penalty: without it the trained rule tends to settle into small oscillations, not a fixed point
    (5x5: median relative residual 0.05-0.08 after 40 steps; with weight 1: 1e-3)."""
    T = model.config.train_iters
    z, stats = model.solve(x, max_iter=rng.randint(max(1, T // 2), 2 * T), generator=generator, shard=shard)
    loss = _ce(model.head(z), y)
    if residual_weight:
        rel = residuals(model.step_map(x)(z), z)[1]
        loss = loss + residual_weight * (rel ** 2).mean()
    return loss, stats


@torch.no_grad()
def quick_accuracy(model, layouts, max_iter: int, batch: int = 200) -> float:
    """Fraction of mazes fully solved (every pixel right) from the test-time initial state."""
    model.eval()
    device = next(model.parameters()).device
    solved = 0
    for i in range(0, len(layouts), batch):
        x, y = to_images(torch.as_tensor(layouts[i:i + batch]).to(device))
        z, _ = solve_for_eval(model, x, max_iter)
        solved += int((predict(model.head(z), x) == y.bool()).flatten(1).all(1).sum())
    model.train()
    return solved / len(layouts)


