"""A whole task written outside the package: learn the rule of a known cellular automaton.

The automaton is heat diffusion with clamped sources (Jacobi's iteration for Laplace's equation): every free
cell takes the mean of its four neighbours, every source cell keeps its temperature. Its fixed point is the
harmonic interpolation of the sources. The model learns a 3x3 stencil; its rule is a contraction (the
stencil is `gamma` < 1 times a softmax over its nine weights), so it has one fixed point, reached from any
state, and it is trained by implicit differentiation at that fixed point. One file: model kind, config,
presets, task, metric.

    deqnca train --task heat --plugin tests/plugins/heat_task.py --out runs/heat
    deqnca eval runs/heat/last --plugin tests/plugins/heat_task.py
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

import deqnca
from deqnca.core.configs import load_dataclass, option

NEIGHBOURS = torch.tensor([[0.0, 0.25, 0.0], [0.25, 0.0, 0.25], [0.0, 0.25, 0.0]])


def heat_problems(n: int, size: int, sources: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, target): x (n, 2, size, size) holds the source temperatures and the source mask; target (n, 1, ...)
    is the known automaton's fixed point (Jacobi iterated until it stops moving)."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(n, 1, size, size)
    mask[..., 0, :] = mask[..., -1, :] = mask[..., :, 0] = mask[..., :, -1] = 1.0      # a clamped border
    idx = torch.randint(0, size * size, (n, sources), generator=g)
    mask.view(n, -1).scatter_(1, idx, 1.0)
    temp = torch.rand(n, 1, size, size, generator=g) * mask
    z = temp.clone()
    for _ in range(20 * size * size):
        z_next = mask * temp + (1 - mask) * F.conv2d(z, NEIGHBOURS.view(1, 1, 3, 3), padding=1)
        if (z_next - z).abs().max() < 1e-7:
            break
        z = z_next
    return torch.cat([temp, mask], 1), z_next


@dataclass
class HeatModelConfig:
    """The learned automaton: a 3x3 stencil of positive weights summing to `gamma` (a contraction)."""
    gamma: float = option(0.995, "the stencil's weight sum (< 1: one fixed point)", min=0.0, max=0.999)
    max_iter: int = option(400, "solver iterations", min=1, max=100_000)
    tol: float = option(1e-5, "relative residual the solver stops at", min=0.0)

    @classmethod
    def from_dict(cls, d: dict) -> HeatModelConfig:
        return load_dataclass(cls, d, what="heat model config")

    def to_dict(self) -> dict:
        return asdict(self)


@deqnca.MODELS.register("heat")
class HeatModel(deqnca.CellularModel):
    """x (B, 2, H, W): source temperatures and source mask -> the temperature field at the fixed point."""
    Config = HeatModelConfig

    def __init__(self, config: HeatModelConfig | dict):
        super().__init__()
        self.config = config if isinstance(config, HeatModelConfig) else HeatModelConfig.from_dict(config)
        self.stencil = nn.Parameter(torch.randn(1, 1, 3, 3) * 0.1)       # logits of the nine weights

    def kernel(self) -> torch.Tensor:
        return self.config.gamma * torch.softmax(self.stencil.flatten(), 0).view(1, 1, 3, 3)

    def initial_state(self, x, generator=None):
        return torch.rand(x.shape[0], 1, *x.shape[2:], generator=generator, device=x.device)

    def step_map(self, x, generator=None):
        temp, mask, kernel = x[:, :1], x[:, 1:], self.kernel()
        return lambda z: mask * temp + (1 - mask) * F.conv2d(z, kernel, padding=1)

    def read(self, z, x):
        return z

    def solve(self, x, z0=None, generator=None, **solver_kw):
        kw = {"max_iter": self.config.max_iter, "tol": self.config.tol, **solver_kw}
        z0 = self.initial_state(x, generator) if z0 is None else z0
        implicit = deqnca.make_gradient("implicit", b_max_iter=self.config.max_iter, b_tol=self.config.tol)
        return implicit(self.step_map(x), deqnca.solvers.get_solver("fixed_point"), z0, **kw)


@dataclass
class HeatConfig(deqnca.TrainConfig):
    """The heat task's options: the engine's, plus the problems' size and counts."""
    size: int = option(10, "grid side", min=4, max=64)
    sources: int = option(6, "interior source cells per problem (besides the clamped border)", min=0)
    train_count: int = option(256, "training problems", min=1)
    test_count: int = option(64, "held-out problems", min=1)
    model: dict = option({}, "the model's config (HeatModelConfig fields)", flag=False)


PRESETS = deqnca.Registry("heat preset", "a function of no arguments returning a HeatConfig")


@PRESETS.register("default")
def default() -> HeatConfig:
    """A few hundred Adam steps on 10x10 grids: the learned stencil's fixed point within 1e-3 of the heat field."""
    return HeatConfig(epochs=8, batch_size=32, optimizer="adam", lr=0.1)


@deqnca.register_task("heat")
class HeatTask(deqnca.Task):
    """Learn the heat automaton's rule from its fixed points: the loss is the squared error at the fixed point
    of the learned rule, differentiated implicitly."""
    name = "heat"
    Config = HeatConfig
    presets = PRESETS

    def setup(self):
        c = self.cfg
        self.x, self.y = heat_problems(c.train_count, c.size, c.sources, seed=c.seed)
        self.xt, self.yt = heat_problems(c.test_count, c.size, c.sources, seed=c.seed + 10_000)

    def build_model(self):
        return HeatModel(HeatModelConfig.from_dict(self.cfg.model))

    def steps_per_epoch(self):
        return -(-len(self.x) // self.cfg.batch_size)

    def start_epoch(self, epoch):
        self.order = torch.randperm(len(self.x), generator=torch.Generator().manual_seed(self.cfg.seed + epoch))

    def batch(self, epoch, index, global_step):
        rows = self.order[index * self.cfg.batch_size:(index + 1) * self.cfg.batch_size]
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + global_step)
        return deqnca.Batch((self.x[rows], self.y[rows], g), len(rows), len(rows), index)

    def loss(self, batch):
        x, y, g = batch.data
        loss = F.mse_loss(self.model(x, generator=g), y)
        return loss, loss.detach()

    def after_step(self, batch, out, ok, step):
        if ok:
            self.meter.add("loss", float(out) * batch.local, batch.local)

    def end_epoch(self, epoch, global_step, elapsed):
        return {"epoch": epoch, "train_loss": self.meter.mean("loss"), **self.evaluate()}

    @torch.no_grad()
    def evaluate(self):
        self.model.eval()
        z, stats = self.model.solve(self.xt, generator=torch.Generator().manual_seed(0))
        self.model.train()
        return {"test_mae": float((z - self.yt).abs().mean()), "test_rel_residual": float(stats.rel_residual.max())}
