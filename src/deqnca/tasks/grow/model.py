"""The two ways to get a differentiable grown pattern from the same rule.

BPTT (the paper's recipe): roll the stochastic rule out for T steps with autograd on; memory ∝ T.

Equilibrium: the grown pattern is a fixed point z* = f(z*) of the EXPECTED update f(z) = z + p·Δ(z)
(alive-masked), which is exactly the set of fixed points of the stochastic rule (tasks/grow/rule.py).
Forward: T growth steps of the stochastic rule without autograd (standard growing NCAs do not settle
by themselves, the growth phase brings the state near the pattern), then a solver on f. Backward:
phantom (default) or implicit (IFT) gradient at z*, memory independent of T (docs/grow.md says
why phantom: at the grown pattern I − J is near-singular). Convergence is trained for, not
assumed: the loss adds w_res·‖f(z*) − z*‖² (so z* becomes a fixed point) and optionally tools to keep
the fixed point attracting (their measured effects are in docs/grow.md):
  w_jac·‖∂f/∂z‖²_F      Hutchinson, TorchDeq's jac_reg (minimised by killing every cell: J = 0 there)
  w_ρ·max(ρ − ρ₀, 0)²    ρ the spectral radius of ∂f/∂z at z* by power iteration, a hinge that acts
                         only on the expanding direction
  restart noise σ        the phantom steps start from z* + σ·noise on the live cells, so their loss
                         rewards pulling nearby states back to the pattern
The windowed recipe (grow/config.py: the "window" preset) cuts the solve to one step and lets the k phantom steps
iterate the stochastic rule from pool states of every age: mid-growth they are truncated BPTT through
growth, which the gradient at z* cannot teach (∂z*/∂z₀ = 0); at the pattern, the phantom gradient.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from deqnca.core.gradients import make_gradient
from deqnca.core.model import MODELS, CellularModel
from deqnca.core.solvers import get_solver, rollout
from deqnca.engine.options import MAX_SIZE
from deqnca.tasks.grow.rule import GrowingConfig, GrowingNCARule, target_loss


@dataclass
class StepOutput:
    final: torch.Tensor                  # (B, C, H, W) detached state after the forward pass
    loss: torch.Tensor                   # scalar target loss (the number to compare across trainers)
    per_sample: torch.Tensor             # (B,) target loss per sample
    extra: dict = field(default_factory=dict)   # trainer-specific tensors (residual, penalties)


class BPTTForward:
    """T steps of the stochastic rule, differentiated step by step."""

    name = "bptt"

    def __init__(self):
        self.strategy, self.solve = make_gradient("bptt"), get_solver("rollout")

    def __call__(self, rule: GrowingNCARule, z0, target, steps: int, generator, shard=None):
        z, _ = self.strategy(rule.stochastic_map(generator, shard), self.solve, z0, max_iter=steps, measure=False)
        per_sample = target_loss(z, target)
        return per_sample.mean(), StepOutput(z.detach(), per_sample.mean().detach(), per_sample.detach())


class EquilibriumForward:
    """Growth rollout (no autograd) → solver on the expected map → implicit/phantom gradient at z*."""

    name = "implicit"

    def __init__(self, solver="rollout", solver_iter=32, solver_tol=1e-3, gradient="phantom",
                 b_solver="fixed_point", b_max_iter=32, b_tol=1e-4, phantom_k=8, residual_weight=1.0, jac_weight=0.0,
                 restart_noise=0.0, spectral_weight=0.0, spectral_target=0.95, spectral_iters=8,
                 phantom_map="expected"):
        if restart_noise and gradient != "phantom":
            raise ValueError("restart_noise perturbs the phantom gradient's start: it needs gradient 'phantom'")
        kw = {"b_solver": b_solver, "b_max_iter": b_max_iter, "b_tol": b_tol} if gradient == "implicit" \
            else {"k": phantom_k}
        self.strategy, self.solve = make_gradient(gradient, **kw), get_solver(solver)
        self.rollout = get_solver("rollout")
        self.solver_kw = {"max_iter": solver_iter, "tol": solver_tol}
        self.residual_weight, self.jac_weight = residual_weight, jac_weight
        self.restart_noise = restart_noise
        self.spectral_weight, self.spectral_target = spectral_weight, spectral_target
        self.spectral_iters = spectral_iters
        if phantom_map not in ("expected", "stochastic"):
            raise ValueError(f"phantom_map {phantom_map!r}: choose expected or stochastic")
        if phantom_map == "stochastic" and gradient != "phantom":
            raise ValueError("phantom_map 'stochastic' iterates the phantom gradient's steps: "
                             "it needs gradient 'phantom'")
        self.phantom_map = phantom_map

    def __call__(self, rule: GrowingNCARule, z0, target, steps: int, generator, shard=None):
        with torch.no_grad():
            z_grown, _ = self.rollout(rule.stochastic_map(generator, shard), z0, max_iter=steps, measure=False)
        f = rule.expected_map()
        # the map the solver and the phantom steps iterate: the expected map (its fixed points are the
        # stochastic rule's), or the stochastic rule itself, for a window that ends mid-growth, where the
        # two dynamics differ and the replay follows the stochastic one
        g = f if self.phantom_map == "expected" else rule.stochastic_map(generator, shard)
        if self.restart_noise and torch.is_grad_enabled():
            # the phantom gradient's k steps, started from a perturbed z* instead of z* itself: the loss
            # at their end rewards a fixed point that pulls nearby states back (an attractor), not just
            # one that sits at the target; the pool keeps the unperturbed z*
            with torch.no_grad():
                z_star, stats = self.solve(g, z_grown, **self.solver_kw)
            z_end = self.strategy.unroll(g, perturb_live(rule, z_star, self.restart_noise, generator, shard))
        else:
            z_star, stats = self.strategy(g, self.solve, z_grown, **self.solver_kw)
            z_end = z_star
        total = target_loss(z_end, target).mean()
        per_sample = target_loss(z_star.detach(), target)   # the number compared across trainers: at z* itself
        loss = per_sample.mean()
        # residual and Jacobian penalties at the (detached) solution: their gradient reaches the
        # weights through one evaluation of f, so memory stays independent of T
        z_leaf = z_star.detach().requires_grad_(self.jac_weight > 0 or self.spectral_weight > 0)
        f_leaf = f(z_leaf)
        residual = (f_leaf - z_leaf).pow(2).mean()
        if self.residual_weight:
            total = total + self.residual_weight * residual
        extra = {"residual_mse": residual.detach(), "rel_residual": stats.rel_residual.detach(),
                 "solver_steps": stats.nstep}
        if self.jac_weight:
            jac = jac_reg(f_leaf, z_leaf, generator, shard)
            total = total + self.jac_weight * jac
            extra["jac_frobenius"] = jac.detach()
        if self.spectral_weight:
            rho = spectral_radius_estimate(f_leaf, z_leaf, self.spectral_iters, generator, shard)
            penalty = torch.relu(rho - self.spectral_target).pow(2).mean()
            total = total + self.spectral_weight * penalty
            extra["spectral_estimate"] = rho.detach().max()
        return total, StepOutput(z_star.detach(), loss.detach(), per_sample.detach(), extra)


def jac_reg(f_z, z, generator=None, shard=None) -> torch.Tensor:
    """TorchDeq's jac_reg (one Hutchinson vector: ‖vᵀ ∂f/∂z‖² / numel, an estimate of the mean squared
    Frobenius norm), with v drawn from the step's generator, for the global batch under `shard`."""
    v = _global_randn(z.shape, generator, shard, z.device, z.dtype)
    vj = torch.autograd.grad(f_z, z, v, retain_graph=True, create_graph=True)[0]
    return vj.pow(2).sum() / z.numel()


def _global_randn(shape, generator, shard, device, dtype):
    """Normal noise for this process's rows, drawn for the global batch as one process draws it."""
    rows = shape[0] if shard is None else shard.size
    v = torch.randn((rows, *shape[1:]), generator=generator, device=device, dtype=dtype)
    return v if shard is None else shard.take(v)


def perturb_live(rule, z, scale: float, generator=None, shard=None) -> torch.Tensor:
    """z + scale·N(0, 1) on the live cells (dead cells stay empty, so the pattern cannot spread by noise)."""
    noise = _global_randn(z.shape, generator, shard, z.device, z.dtype)
    return z + scale * noise * rule.alive(z)


def spectral_radius_estimate(f_z, z, iters: int, generator=None, shard=None) -> torch.Tensor:
    """(B,) differentiable estimate of the spectral radius of ∂f/∂z at z: power iteration on
    vector-Jacobian products without a graph, then one more VJP with create_graph, so ‖Jᵀv‖ for the
    (detached) dominant direction v carries a gradient to the weights. A hinge on it penalises only the
    expanding direction, not the live cells themselves (the Frobenius penalty's way out: kill them)."""
    dims = tuple(range(1, z.dim()))
    v = _global_randn(z.shape, generator, shard, z.device, z.dtype)
    v = v / torch.linalg.vector_norm(v, dim=dims, keepdim=True)
    for _ in range(iters):
        w = torch.autograd.grad(f_z, z, v, retain_graph=True)[0]
        v = w / torch.linalg.vector_norm(w, dim=dims, keepdim=True).clamp_min(1e-30)
    w = torch.autograd.grad(f_z, z, v.detach(), retain_graph=True, create_graph=True)[0]
    return torch.linalg.vector_norm(w, dim=dims)


PAPER_HORIZON = 96          # the paper's growth steps


@MODELS.register("grow")
class GrowModel(CellularModel):
    """The growing NCA: the rule plus the target it was trained on, so a checkpoint alone can be replayed
    and scored.

    The model kind ``"grow"`` (`CellularModel`). A growing NCA has no input: `x` is a *canvas*, any tensor
    (B, ·, H, W) of which only the batch size, the grid size and the device are used (`canvas(batch)` makes
    an empty one, (B, 0, H, W), at the target's size). `initial_state` is the paper's seed, one live cell in
    the centre; `step_map` is one step of the stochastic rule (`generator` draws the fire masks, as the
    paper's replay); `read` is the visible premultiplied RGBA (B, 4, H, W), what the target is compared
    with; `solve` grows for `max_iter` steps (default 96, the paper's horizon). The DEQ view is the
    rule's expected map (`rule.expected_map()`), whose fixed points are the stochastic rule's
    (`deqnca grow measure` solves it).

    Args:
        config: a `GrowingConfig` or its dict form; its ``target_shape`` is set from `target` when given.
        target: the target image (C, H, W); default zeros of ``target_shape`` (a checkpoint's target is
            loaded with its weights).

    Example:
        >>> model = GrowModel({"hidden": 8, "target_shape": [4, 9, 9]})
        >>> model.read(model.initial_state(model.canvas(2)), None).shape
        torch.Size([2, 4, 9, 9])
    """

    Config = GrowingConfig

    def __init__(self, config: GrowingConfig | dict | None = None, target: torch.Tensor | None = None):
        super().__init__()
        config = GrowingConfig.from_dict(config) if isinstance(config, dict) else (config or GrowingConfig())
        if target is not None:
            config = dataclasses.replace(config, target_shape=list(target.shape))
        shape = config.target_shape
        if len(shape) != 3 or not all(isinstance(n, int) and 0 < n <= MAX_SIZE for n in shape):
            raise ValueError(f"target_shape {shape}: need (channels, height, width), each 1..{MAX_SIZE}")
        self.rule = GrowingNCARule(config)
        self.config = self.rule.config
        self.register_buffer("target", target.clone() if target is not None else torch.zeros(shape))

    def canvas(self, batch: int = 1, device=None) -> torch.Tensor:
        """An empty input (batch, 0, H, W) at the target's size: what `x` is for a growing NCA."""
        return torch.empty(batch, 0, *self.target.shape[1:], device=device or self.target.device)

    def initial_state(self, x, generator=None):
        """One live seed cell in the centre of a grid of x's size, for each of x's samples."""
        return self.rule.seed(x.shape[0], *x.shape[-2:], device=x.device)

    def step_map(self, x, generator=None):
        """One step of the stochastic rule; `generator` draws the fire masks."""
        return self.rule.stochastic_map(generator)

    def read(self, z, x):
        """(B, 4, H, W): the visible channels, premultiplied RGBA."""
        return z[:, :4]

    def solve(self, x, z0=None, generator=None, max_iter: int = PAPER_HORIZON, **_):
        """(z, stats): the pattern grown by `max_iter` steps of the stochastic rule from the seed (or `z0`)."""
        z0 = self.initial_state(x, generator) if z0 is None else z0
        return rollout(self.step_map(x, generator), z0, max_iter, measure=False)

    @classmethod
    def describe_config(cls, config) -> str:
        return "growing NCA"


def make_forward(trainer: str, **equilibrium_kw):
    if trainer == "bptt":
        return BPTTForward()
    if trainer == "implicit":
        return EquilibriumForward(**equilibrium_kw)
    raise ValueError(f"unknown trainer {trainer!r}; choose bptt or implicit")


def normalise_gradients(params) -> None:
    """The paper's per-parameter-tensor gradient normalisation: every update has unit direction."""
    for p in params:
        if p.grad is not None:
            p.grad.div_(p.grad.norm() + 1e-8)


@torch.no_grad()
def spectral_radius(f, z, iters: int = 24, generator=None) -> torch.Tensor:
    """(B,) estimate of the spectral radius of ∂f/∂z at z by power iteration on VJPs (Jᵀ has J's
    spectrum). The growth factor is averaged geometrically over the second half of the iterations,
    which is robust to the period-2 wobble a dominant complex pair causes."""
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        fz = f(z)
    v = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
    dims = tuple(range(1, z.dim()))
    v = v / torch.linalg.vector_norm(v, dim=dims, keepdim=True)
    logs = []
    for _ in range(iters):
        with torch.enable_grad():
            w = torch.autograd.grad(fz, z, v, retain_graph=True)[0]
        n = torch.linalg.vector_norm(w, dim=dims, keepdim=True)
        logs.append(n.flatten().clamp_min(1e-30).log())
        v = w / n.clamp_min(1e-30)
    return torch.stack(logs[iters // 2:]).mean(0).exp()


def disc_masks(n: int, height: int, width: int, generator=None, device=None) -> torch.Tensor:
    """(n, 1, H, W) masks that are 0 inside a random disc, as the paper's make_circle_masks: centre
    uniform in the middle half of the grid, radius 0.1–0.4 of the half-width."""
    u = torch.rand(n, 3, generator=generator, device=device)
    centre, radius = u[:, :2] - 0.5, 0.1 + 0.3 * u[:, 2]
    ys = torch.linspace(-1, 1, height, device=device)[None, :, None]
    xs = torch.linspace(-1, 1, width, device=device)[None, None, :]
    inside = (ys - centre[:, 0, None, None]) ** 2 + (xs - centre[:, 1, None, None]) ** 2 < radius[:, None, None] ** 2
    return (~inside).float()[:, None]
