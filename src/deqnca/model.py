"""EquilibriumModel = encoder + conditioning + rule + solver + gradient + read-out.

Data flows one way: x --K1, ReLU--> u --(rule bound to u by the conditioning)--> f --solver,
gradient--> z --read-out--> logits. The config is a plain dict so that it round-trips through the
JSON file next to every checkpoint.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .conditioning import make_conditioning
from .gradients import make_gradient
from .readout import MLPReadout, ink_mask, ink_vote
from .rules import make_rule
from .solvers import SolveStats, get_solver


@dataclass
class ModelConfig:
    rule: str = "residual_tanh"
    rule_kw: dict = field(default_factory=dict)
    conditioning: str = "injection"
    in_channels: int = 1
    input_channels: int = 16          # channels of u = ReLU(K1 * x)
    state_channels: int = 32
    hidden: int = 32
    classes: int = 10
    solver: str = "broyden"
    solver_kw: dict = field(default_factory=lambda: {"max_iter": 16, "tol": 1e-3})
    gradient: str = "phantom"
    gradient_kw: dict = field(default_factory=dict)
    noise_std: float = 1.0            # the state starts from N(0, noise_std²), in training and inference
    readout: str = "global"           # "global": pool then MLP; "cell": MLP per cell, trained per cell
    readout_norm: str = "none"        # "batch": standardise the pooled state before the MLP (readout.py)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        unknown = set(d) - set(known)
        if unknown:
            raise ValueError(f"unknown model config keys {sorted(unknown)}")
        return cls(**copy.deepcopy(known))

    def to_dict(self) -> dict:
        return asdict(self)


class EquilibriumModel(nn.Module):
    def __init__(self, config: ModelConfig | dict):
        super().__init__()
        if isinstance(config, dict):
            config = ModelConfig.from_dict(config)
        self.config = config
        self.K1 = nn.Conv2d(config.in_channels, config.input_channels, 3, padding=1)
        self.rule = make_rule(config.rule, input_channels=config.input_channels,
                              state_channels=config.state_channels, **config.rule_kw)
        if config.readout not in ("global", "cell"):
            raise ValueError(f"unknown readout {config.readout!r}; choose 'global' or 'cell'")
        self.readout = MLPReadout(config.state_channels, config.hidden, config.classes, config.readout_norm)
        self.conditioning = make_conditioning(config.conditioning)
        self.gradient = make_gradient(config.gradient, **config.gradient_kw)
        self.solver_name, self.solver_kw = config.solver, dict(config.solver_kw)
        self.last_stats: SolveStats | None = None

    def encode(self, x):
        return torch.relu(self.K1(x))

    def initial_state(self, u, generator: torch.Generator | None = None):
        """Noise shaped like u's cells (u: the image or its encoding), at least float32: under bfloat16
        autocast the encoding is bfloat16, and the state must not accumulate bfloat16 rounding."""
        shape = (u.shape[0], self.config.state_channels, *u.shape[2:])
        dtype = torch.promote_types(u.dtype, torch.float32)
        z0 = torch.randn(shape, generator=generator, device=u.device, dtype=dtype)
        return (z0 * self.config.noise_std).contiguous(memory_format=_memory_format(u))

    def step_map(self, x):
        """(f, u): the rule bound to input x — the cellular automaton's update for this image."""
        u = self.encode(x)
        return self.rule.bind(u, self.conditioning), u

    def check_input(self, x):
        """One-line errors for inputs the model cannot take (a wrong shape, NaN/inf pixels)."""
        c = self.config.in_channels
        if not torch.is_tensor(x) or x.dim() != 4 or x.shape[1] != c:
            shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f"input must be a (batch, {c}, height, width) tensor, got {shape}; "
                             f"add the missing axes, e.g. x.view(-1, {c}, H, W)")
        if min(x.shape[2:]) < 3:
            raise ValueError(f"input is {x.shape[2]}x{x.shape[3]}; the 3x3 rule needs at least 3x3 cells")
        if not torch.isfinite(x).all():
            raise ValueError("input contains NaN or inf; clean or mask those pixels before calling the model")

    def solve(self, x, solver: str | None = None, generator=None, z0=None, check_input: bool = True,
              **solver_kw):
        if check_input:
            self.check_input(x)
        f, u = self.step_map(x)
        if z0 is None:
            z0 = self.initial_state(u, generator)
        kw = {**self.solver_kw, **solver_kw}
        z, stats = self.gradient(f, get_solver(solver or self.solver_name), z0, **kw)
        self.last_stats = stats
        return z, stats

    def forward(self, x, generator=None, per_cell: bool = False, **solve_kw):
        """(B, classes) logits; with per_cell=True (read-out "cell" only) the (B, classes, H, W) cell logits."""
        z, _ = self.solve(x, generator=generator, **solve_kw)
        if per_cell:
            if self.config.readout != "cell":
                raise ValueError("per_cell=True needs a model trained with readout='cell'")
            return self.readout.local(z, 1)
        return self.read(z, x)

    def read(self, z, x):
        """(B, classes) logits of state z for input x: pooled, or the ink vote of the cells."""
        if self.config.readout == "global":
            return self.readout(z)
        return ink_vote(self.readout.local(z, 1), ink_mask(x))

    @torch.no_grad()
    def trajectory(self, x, steps: int, generator=None, z0=None):
        """The NCA view: states z_0 .. z_steps of the plain rollout, and per-step rel residuals."""
        f, u = self.step_map(x)
        z = self.initial_state(u, generator) if z0 is None else z0
        states = [z]
        for _ in range(steps):
            z = f(z)
            states.append(z)
        return torch.stack(states, dim=1)


def _memory_format(t):
    return torch.channels_last if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) \
        and not t.is_contiguous() else torch.contiguous_format


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
