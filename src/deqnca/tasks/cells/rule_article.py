"""The self-classifying MNIST rule (Randazzo, Mordvintsev, Niklasson, Levin, Greydanus; Distill 2020,
distill.pub/2020/selforg/mnist), as in the article's notebook (google-research/self-organising-systems,
notebooks/mnist_ca.ipynb) and CAX's port (examples/44_self_classifying_mnist.ipynb).

State: 1 immutable grey channel x (the digit) and C = 19 mutable channels z; the last 10 of z are the
cell's classification. One step:

    perceive   p = relu(W_p * [x, z] + b_p)          a trainable 3×3 convolution, 20 -> 80 channels
    update     Δ = W_2 · relu(W_1 · p + b_1) + b_2    1×1 convs, 80 -> 80 -> 19; W_2, b_2 start at zero
    noise      Δ ← Δ + ε,  ε ~ N(0, 0.02²)            "residual noise" (training and evaluation)
    fire       z' = z + (m ∧ alive) ⊙ Δ,  m ~ Bernoulli(0.5) per cell
    alive      alive = x > 0.1: only cells on the digit's ink update; dead cells never change

14,480 + 6,480 + 1,539 = 22,499 parameters at the article's sizes (tested). The deterministic
`expected_map` z + p·alive⊙Δ (no noise) has the same fixed points as the stochastic step for every mask
(as for the growing NCA, tasks/grow/rule.py); evaluation measures the residual on it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SelfClassifyingRule(nn.Module):
    """The article's rule; `input_channels` is the grey channel (1), `state_channels` the mutable ones."""

    def __init__(self, input_channels: int = 1, state_channels: int = 19, perception: int = 80, hidden: int = 80,
                 classes: int = 10, fire_rate: float = 0.5, noise: float = 0.02, alive_threshold: float = 0.1):
        super().__init__()
        if classes > state_channels:
            raise ValueError(f"{classes} classification channels need at least as many state channels "
                             f"(got {state_channels})")
        if not 0 < fire_rate <= 1:
            raise ValueError(f"fire_rate {fire_rate}: must be in (0, 1]")
        self.input_channels, self.state_channels, self.classes = input_channels, state_channels, classes
        self.fire_rate, self.noise, self.alive_threshold = fire_rate, noise, alive_threshold
        self.perceive = nn.Conv2d(input_channels + state_channels, perception, 3, padding=1)
        self.w1 = nn.Conv2d(perception, hidden, 1)
        self.w2 = nn.Conv2d(hidden, state_channels, 1)
        nn.init.zeros_(self.w2.weight)      # "do nothing" start, as the article (and its bias: TF's default)
        nn.init.zeros_(self.w2.bias)

    def alive(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) bool: the cells on the digit (grey value above the threshold)."""
        return x > self.alive_threshold

    def initial_state(self, x: torch.Tensor) -> torch.Tensor:
        """The article's start: every mutable channel zero."""
        return x.new_zeros(x.shape[0], self.state_channels, *x.shape[2:])

    def delta(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.relu(self.w1(F.relu(self.perceive(torch.cat([x, z], dim=1))))))

    def step(self, z: torch.Tensor, x: torch.Tensor, generator: torch.Generator | None = None,
             stochastic: bool = True) -> torch.Tensor:
        """One update of every cell: stochastic (fire mask and residual noise) or the expected update."""
        alive = self.alive(x)
        dz = self.delta(z, x)
        if not stochastic:
            return z + self.fire_rate * dz * alive
        if self.noise:
            dz = dz + self.noise * torch.randn(dz.shape, generator=generator, device=dz.device, dtype=dz.dtype)
        fire = torch.rand(z.shape[0], 1, *z.shape[2:], generator=generator, device=z.device,
                          dtype=z.dtype) <= self.fire_rate
        return z + dz * (fire & alive)

    def step_map(self, x: torch.Tensor, generator: torch.Generator | None = None):
        """z -> the next state of the stochastic CA on input x (what a rollout iterates)."""
        return lambda z: self.step(z, x, generator)

    def expected_map(self, x: torch.Tensor):
        """z -> z + p·alive⊙Δ(z): deterministic, with exactly the stochastic step's fixed points."""
        return lambda z: self.step(z, x, stochastic=False)

    def compile_for_eval(self) -> None:
        """Compile Δ with torch.compile for long evaluations (its random draws stay eager, so the stochastic
        steps draw the same numbers; the compiled Δ differs from the eager one by float rounding only)."""
        self.delta = torch.compile(self.delta, dynamic=False)

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """(B, classes, H, W): the last `classes` channels of the state are the cell's label scores."""
        return z[:, -self.classes:]
