"""The Growing NCA rule (Mordvintsev et al. 2020, distill.pub/2020/growing-ca).

State: C channels per cell (RGBA + C−4 hidden). One step:

    perceive   y = [z, Sobel_x * z, Sobel_y * z]      fixed depthwise 3×3 filters, 3C channels
    update     Δ = W2 · relu(W1 · y + b1)             1×1 convs; W2 starts at zero (Δ ≡ 0)
    fire       z' = z + m ⊙ Δ,  m ~ Bernoulli(p) per cell    (stochastic)
               z' = z + p · Δ                                  (expected, = E_m[z + m ⊙ Δ])
    alive      z' ← z' ⊙ [alive(z) ∧ alive(z')],  alive(z) = maxpool3×3(alpha) > 0.1

The alive mask is a comparison, so autograd treats it as a constant — exactly the choice we want in
the implicit backward pass: the mask is piecewise constant in z and, generically, constant in a
neighbourhood of a fixed point. The price: a dead cell passes no gradient, so no loss can ask a cell
next to the pattern to come alive. `alive_surrogate = τ > 0` (a training option, not part of the
rule: forward values are unchanged) gives the mask a straight-through gradient, that of
σ((maxpool α − 0.1)/τ) before and after the step.

Why the expected update is the right map for a fixed point (the equilibrium trainer's decision):
on the cells that are alive before and after the step, z* is a fixed point of the stochastic step for
EVERY fire mask m iff m ⊙ Δ(z*) = 0 for all m, iff Δ(z*) = 0 there, iff z* is a fixed point of the
expected step z + p·Δ(z) (p > 0). Dead cells are zero in both. So we solve and differentiate the
deterministic expected map, and its fixed point is exactly a fixed point of the stochastic rule;
tests/test_grow.py and `deqnca grow measure` check this by replaying the stochastic rule from z*.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from deqnca.core.configs import option
from deqnca.engine.options import MAX_SIZE


@dataclass
class GrowingConfig:
    """The growing NCA's rule (sizes, fire rate, alive threshold) and the shape of the target it grows.

    Example:
        >>> GrowingConfig.from_dict({"hidden": 64}).target_shape
        [4, 72, 72]
    """
    channels: int = option(16, "channels per cell: RGBA + hidden", min=4, max=MAX_SIZE)
    hidden: int = option(128, "width of the 1×1 update network", min=1, max=MAX_SIZE)
    fire_rate: float = option(0.5, "probability that a cell updates in a step", min=0, max=1)
    alive_threshold: float = option(0.1, "a cell is alive where the 3×3 max of alpha exceeds it", min=0, max=1)
    # the target image's (channels, height, width): its tensor is part of the model (`GrowModel.target`)
    target_shape: list = option([4, 72, 72], "(channels, height, width) of the target image", flag=False)

    def to_dict(self) -> dict:
        """A plain, JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> GrowingConfig:
        """The config from a plain dict (a checkpoint's ``model_config``); unknown keys are an error."""
        from deqnca.core.configs import load_dataclass

        return load_dataclass(cls, d, what="growing NCA config")


def _perception_filters(channels: int) -> torch.Tensor:
    """(3C, 1, 3, 3) depthwise filters: identity, Sobel x, Sobel y for every channel (paper's order)."""
    identity = torch.tensor([[0., 0, 0], [0, 1, 0], [0, 0, 0]])
    sobel_x = torch.tensor([[-1., 0, 1], [-2, 0, 2], [-1, 0, 1]]) / 8
    bank = torch.stack([identity, sobel_x, sobel_x.T])                 # (3, 3, 3)
    return bank.repeat(channels, 1, 1)[:, None]                        # channel c → rows 3c..3c+2


class GrowingNCARule(nn.Module):
    """The paper's rule: 48·128 + 128 + 128·16 = 8,320 parameters at the default sizes."""

    def __init__(self, config: GrowingConfig | dict | None = None):
        super().__init__()
        if isinstance(config, dict):
            config = GrowingConfig.from_dict(config)
        self.config = config or GrowingConfig()
        c, h = self.config.channels, self.config.hidden
        if c < 4:
            raise ValueError(f"a growing NCA needs at least 4 channels (RGBA), got {c}")
        self.register_buffer("filters", _perception_filters(c), persistent=False)
        self.w1 = nn.Conv2d(3 * c, h, 1)
        self.w2 = nn.Conv2d(h, c, 1, bias=False)
        nn.init.zeros_(self.w2.weight)     # "do nothing" start: the seed is a fixed point at init
        self.alive_surrogate = 0.0          # τ of the alive mask's straight-through gradient; 0 = none

    def seed(self, batch: int, height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
        """One live cell in the centre: alpha and hidden channels 1, RGB 0."""
        z = torch.zeros(batch, self.config.channels, height, width, device=device, dtype=dtype)
        z[:, 3:, height // 2, width // 2] = 1.0
        return z

    def perceive(self, z: torch.Tensor) -> torch.Tensor:
        return F.conv2d(z, self.filters, padding=1, groups=self.config.channels)

    def delta(self, z: torch.Tensor) -> torch.Tensor:
        return self.w2(F.relu(self.w1(self.perceive(z))))

    @staticmethod
    def _alpha_pool(z: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(z[:, 3:4], 3, stride=1, padding=1)

    def alive(self, z: torch.Tensor) -> torch.Tensor:
        return self._alpha_pool(z) > self.config.alive_threshold

    def step(self, z: torch.Tensor, stochastic: bool = True, generator: torch.Generator | None = None,
             shard=None):
        """One update. `shard` (train/distributed.Shard): z is this process's slice of a larger global
        batch; the fire masks are drawn for the global batch and sliced, as one process draws them."""
        pre_pool = self._alpha_pool(z)
        dz = self.delta(z)
        if stochastic:
            b, _, hgt, wid = z.shape
            rows = b if shard is None else shard.size
            u = torch.rand(rows, 1, hgt, wid, generator=generator, device=z.device, dtype=z.dtype)
            fire = (u if shard is None else shard.take(u)) < self.config.fire_rate
            z = z + dz * fire
        else:
            z = z + self.config.fire_rate * dz
        post_pool = self._alpha_pool(z)
        threshold = self.config.alive_threshold
        mask = (pre_pool > threshold) & (post_pool > threshold)
        if self.alive_surrogate > 0 and torch.is_grad_enabled():
            soft = torch.sigmoid((pre_pool - threshold) / self.alive_surrogate) \
                * torch.sigmoid((post_pool - threshold) / self.alive_surrogate)
            return z * (mask.to(z.dtype) + (soft - soft.detach()))   # the hard mask's value, soft's gradient
        return z * mask

    def expected_map(self):
        """The deterministic map whose fixed points are the stochastic rule's fixed points."""
        return lambda z: self.step(z, stochastic=False)

    def stochastic_map(self, generator: torch.Generator | None = None, shard=None):
        return lambda z: self.step(z, stochastic=True, generator=generator, shard=shard)


def target_loss(z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared error of the visible channels (premultiplied RGBA, as in the paper)."""
    return (z[:, :4] - target).pow(2).mean(dim=(1, 2, 3))
