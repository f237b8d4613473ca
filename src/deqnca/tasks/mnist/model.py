"""EquilibriumModel = encoder + conditioning + rule + solver + gradient + read-out.

Data flows one way: x --K1, ReLU--> u --(rule bound to u by the conditioning)--> f --solver,
gradient--> z --read-out--> logits. Every part is named in `ModelConfig` and built from its registry,
so the config round-trips through the JSON file next to every checkpoint.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from deqnca.core.conditioning import make_conditioning
from deqnca.core.configs import option
from deqnca.core.gradients import make_gradient
from deqnca.core.model import MODELS, CellularModel
from deqnca.core.readout import READOUTS
from deqnca.core.rules import RULES, make_rule
from deqnca.core.solvers import SolveStats, get_solver
from deqnca.engine.options import check_solver_kw

CALIBRATION_IMAGES = 2000       # training inputs kept to re-estimate the read-out norm's statistics
MAX_WIDTH = 4096                # channels and hidden units (the checkpoint loader's cap too)
MAX_NOISE_STD = 1000.0          # the initial state's noise (the presets: 1)


@dataclass
class ModelConfig:
    """What an `EquilibriumModel` is made of: every part by its registered name, plus sizes.

    Examples:
        >>> ModelConfig.from_dict({"rule": "contractive_tanh", "solver": "fixed_point"}).state_channels
        32
    """

    rule: str = "residual_tanh"
    rule_kw: dict = field(default_factory=dict)
    conditioning: str = "injection"
    in_channels: int = option(1, "channels of the input image", min=1, max=MAX_WIDTH, flag=False)
    input_stride: int = option(1, "stride of K1: the state's grid is the image's, or every s-th pixel of it",
                               min=1, max=4, flag=False)
    input_channels: int = option(16, "channels of u = ReLU(K1 * x)", min=1, max=MAX_WIDTH, flag=False)
    state_channels: int = option(32, "channels of the state z", min=1, max=MAX_WIDTH, flag=False)
    hidden: int = option(32, "hidden units of the read-out", min=1, max=MAX_WIDTH, flag=False)
    classes: int = option(10, "classes", min=1, max=MAX_WIDTH, flag=False)
    solver: str = "broyden"
    solver_kw: dict = field(default_factory=lambda: {"max_iter": 16, "tol": 1e-3})
    gradient: str = "phantom"
    gradient_kw: dict = field(default_factory=dict)
    noise_std: float = option(1.0, "the state starts from N(0, noise_std²), in training and inference", min=0,
                              max=MAX_NOISE_STD, flag=False)
    readout: str = "global"           # "global": pool then MLP; "cell": MLP per cell, trained per cell
    readout_norm: str = "none"        # "batch": standardise the pooled state before the MLP (readout.py)

    def __post_init__(self):
        check_solver_kw(self.solver_kw)     # max_iter, tol, stop_mode in range; no nested values
        if self.input_stride != 1 and self.readout == "cell":
            from deqnca.core.configs import ConfigError

            raise ConfigError("readout 'cell' reads the state on the image's own grid: it needs input_stride 1")

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        """The config from a plain dict (a checkpoint's ``model_config``); unknown keys are an error."""
        from deqnca.core.configs import load_dataclass

        return load_dataclass(cls, d, what="model config")

    def to_dict(self) -> dict:
        """A plain, JSON-ready dict."""
        return asdict(self)


@MODELS.register("mnist")
class EquilibriumModel(CellularModel):
    """A spatial DEQ that is also a neural cellular automaton: a local rule, solved or iterated.

    The model kind ``"mnist"`` (`CellularModel`): `x` is a batch of images (B, in_channels, H, W);
    `initial_state` is noise N(0, noise_std²) with `state_channels` channels per pixel; `step_map` is the
    rule bound to the encoding u = ReLU(K1 * x); `read` gives the (B, classes) logits; `solve` uses the
    config's solver and gradient.

    Args:
        config: a `ModelConfig` or its dict form (every part named by its registry).

    Examples:
        >>> model = EquilibriumModel({"rule": "contractive_tanh", "solver": "fixed_point",
        ...                           "solver_kw": {"max_iter": 50, "tol": 1e-4}, "gradient": "implicit"})
        >>> model(torch.rand(2, 1, 28, 28)).shape
        torch.Size([2, 10])

    In training mode the model keeps its most recent inputs, so that after training (in any loop) the
    read-out norm's statistics are re-estimated for the final weights the first time it runs in eval
    mode: the running averages BatchNorm keeps during training lag the weights (docs/architecture.md).
    """

    Config = ModelConfig

    def __init__(self, config: ModelConfig | dict):
        super().__init__()
        if isinstance(config, dict):
            config = ModelConfig.from_dict(config)
        self.config = config
        self.K1 = nn.Conv2d(config.in_channels, config.input_channels, 3, padding=1, stride=config.input_stride)
        if not callable(getattr(RULES.get(config.rule), "bind", None)):
            raise ValueError(f"rule {config.rule!r} does not fit EquilibriumModel (it has no bind(u, conditioning)); "
                             "use contractive_tanh, residual_tanh or a rule you registered with that method")
        self.rule = make_rule(config.rule, input_channels=config.input_channels,
                              state_channels=config.state_channels, **config.rule_kw)
        self.readout = READOUTS.build(config.readout, config.state_channels, config.hidden, config.classes,
                                      config.readout_norm)
        self.conditioning = make_conditioning(config.conditioning)
        self.gradient = make_gradient(config.gradient, **config.gradient_kw)
        self.solver_name, self.solver_kw = config.solver, dict(config.solver_kw)
        get_solver(self.solver_name)          # an unknown solver fails here, not at the first forward
        self.last_stats: SolveStats | None = None
        self._calibration_inputs: torch.Tensor | None = None
        self._norm_stale = False

    def encode(self, x):
        """u = ReLU(K1 * x): the input's encoding, the channels the rule is conditioned on."""
        return torch.relu(self.K1(x))

    def initial_state(self, x, generator: torch.Generator | None = None):
        """z_0 for images x: noise N(0, noise_std²) with `state_channels` channels per pixel, drawn from
        `generator`, in the dtype and memory layout of x's encoding (the state `solve` starts from)."""
        with torch.no_grad():
            u = self.encode(x)
        return self._noise(u, generator)

    def _noise(self, u, generator):
        """Noise shaped like u's cells, at least float32: under bfloat16 autocast the encoding is bfloat16,
        and the state must not accumulate bfloat16 rounding."""
        shape = (u.shape[0], self.config.state_channels, *u.shape[2:])
        dtype = torch.promote_types(u.dtype, torch.float32)
        z0 = torch.randn(shape, generator=generator, device=u.device, dtype=dtype)
        return (z0 * self.config.noise_std).contiguous(memory_format=_memory_format(u))

    def step_map(self, x, generator: torch.Generator | None = None):
        """f: the rule bound to input x — the cellular automaton's update for this image (deterministic:
        `generator` is not used)."""
        return self.rule.bind(self.encode(x), self.conditioning)

    @classmethod
    def describe_config(cls, config) -> str:
        return "MNIST classifier (EquilibriumModel)"

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

    def solve(self, x, z0=None, generator=None, solver: str | None = None, check_input: bool = True,
              **solver_kw):
        """(z, stats): the state the solver reaches for input x (differentiable by the model's gradient).

        Args:
            x: images (B, in_channels, H, W).
            z0: the initial state (default: noise, `initial_state`).
            generator: random generator of the initial noise.
            solver: a registered solver name (default: the config's).
            check_input: refuse malformed or non-finite inputs with a one-line error.
            **solver_kw: overrides of the config's ``solver_kw``.
        """
        if check_input:
            self.check_input(x)
        u = self.encode(x)
        f = self.rule.bind(u, self.conditioning)
        if z0 is None:
            z0 = self._noise(u, generator)
        kw = {**self.solver_kw, **solver_kw}
        z, stats = self.gradient(f, get_solver(solver or self.solver_name), z0, **kw)
        self.last_stats = stats
        return _GradientInLayout.apply(z) if z.requires_grad else z, stats

    def forward(self, x, generator=None, per_cell: bool = False, **solve_kw):
        """(B, classes) logits; with per_cell=True (read-out "cell" only) the (B, classes, H, W) cell logits.

        Args:
            x: images (B, in_channels, H, W), any H, W >= 3.
            generator: the random generator of the initial state's noise.
            per_cell: return every cell's logits instead of the image's.
            **solve_kw: solver overrides (``max_iter``, ``tol``, ``solver``, ``z0``, ``check_input``).
        """
        self._track_calibration(x)
        z, _ = self.solve(x, generator=generator, **solve_kw)
        if per_cell:
            if self.config.readout != "cell":
                raise ValueError("per_cell=True needs a model trained with readout='cell'")
            return self.readout.local(z, 1)
        return self.read(z, x)

    def loss(self, x, y, generator=None, **solve_kw):
        """(loss, logits) of a training batch: the read-out's own loss (cross-entropy of the pooled
        read-out, or per ink cell for read-out "cell") at the state the solver reaches."""
        self._track_calibration(x)
        z, _ = self.solve(x, generator=generator, **solve_kw)
        return self.readout.loss(z, x, y)

    def read(self, z, x):
        """(B, classes) logits of state z for input x: pooled, or the ink vote of the cells."""
        return self.readout.read(z, x)

    def _track_calibration(self, x):
        if getattr(self.readout, "norm", None) is None:
            return
        if self.training and torch.is_grad_enabled():
            # the weights are about to change: keep recent inputs to re-estimate the statistics with
            kept = x.detach() if self._calibration_inputs is None else torch.cat([self._calibration_inputs, x.detach()])
            self._calibration_inputs = kept[-CALIBRATION_IMAGES:]
            self._norm_stale = True
        elif not self.training and self._norm_stale and self._calibration_inputs is not None:
            self.calibrate_readout_norm(self._calibration_inputs)

    @torch.no_grad()
    def calibrate_readout_norm(self, x, batch_size: int = 500, images: int = 2000, seed: int = 0):
        """Re-estimate the read-out BatchNorm's running statistics for the current weights.

        The pooled equilibrium state differs between images by ~1e-3 while training moves it by more
        than that every few steps, so BatchNorm's exponential running average lags by many standard
        deviations ("precise BN": a plain average over `images` inputs with the weights frozen).

        Args:
            x: inputs (N, in_channels, H, W), e.g. training images.
            batch_size: images per solve.
            images: how many of `x` to use.
            seed: seed of the initial states' noise.
        """
        norm = getattr(self.readout, "norm", None)
        if norm is None:
            return
        self._norm_stale = False
        was_training = self.training
        self.eval()                       # everything else (e.g. the power iteration) stays frozen
        norm.train()
        momentum, norm.momentum = norm.momentum, None      # None: cumulative average
        norm.reset_running_stats()
        device = next(self.parameters()).device
        gen = torch.Generator(device=device).manual_seed(seed)
        for i in range(0, min(images, len(x)), batch_size):
            self(x[i:i + batch_size].to(device), generator=gen, check_input=False)
        norm.momentum = momentum
        self.train(was_training)

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._norm_stale = False          # loaded statistics belong to the loaded weights


class _GradientInLayout(torch.autograd.Function):
    """Identity whose backward pass returns the gradient in the state's memory layout. The read-out's pooling
    hands back an NCHW gradient; on a channels-last state every elementwise op and convolution of the backward
    pass would then mix layouts (slower kernels and reorder copies; docs/speed.md)."""

    @staticmethod
    def forward(ctx, z):
        ctx.layout = _memory_format(z)
        return z.view_as(z)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous(memory_format=ctx.layout)


def _memory_format(t):
    return torch.channels_last if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) \
        and not t.is_contiguous() else torch.contiguous_format


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters of `model`.

    Examples:
        >>> count_parameters(torch.nn.Linear(3, 2))
        8
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
