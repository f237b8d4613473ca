"""The recall block of Bansal et al. 2022 ("End-to-end algorithm synthesis with recurrent networks"),
as a rule: z' = B2(B1(W_recall * [u, z])), u the raw input image, seen at every step ("recall").

Two forms share the weights' layout (so both models have the same rule family and width):

- form="dt": exactly the DT-recall recurrent block — a bias-free 3x3 recall convolution followed
  by `blocks` residual blocks (conv-ReLU-conv + identity, ReLU). Unbounded; meant to be rolled out
  for a fixed number of steps.
- form="deq": the same block squashed by a scaled tanh, z' = c·tanh(block(u, z)/c), c = `bound`.
  Every iterate lies in [0, c)^C (the block ends in a ReLU) whatever the weights and however many
  steps are taken, so the equilibrium solver can run for thousands of steps at any grid size
  without blowing up. The scale matters: the trained block's outputs reach ~2-4, so with c = 1
  the state saturates at 1 and the gradient through tanh vanishes (5x5 mazes: 2-5% solved after
  630 steps, even with BPTT); with c = 10 tanh is near-identity where the states live (70%, on
  par with DT-recall). The squashing is per cell, so nothing in the rule depends on the grid
  size (unlike a GroupNorm, whose statistics would change with the fraction of path pixels).
  Uniqueness of the fixed point is not enforced (a contraction would make far-away dead ends
  invisible: the sensitivity of z* to an input d cells away is bounded by γ^d); it is trained
  for, with mixed zero/noise initial states and random iteration budgets, and measured by the AA
  score.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from deqnca.core.rules import RULES


class ResidualBlock(nn.Module):
    """DT's BasicBlock without normalisation: relu(x + conv2(relu(conv1(x))))."""

    def __init__(self, width: int):
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)

    def forward(self, x):
        return F.relu(x + self.conv2(F.relu(self.conv1(x))))


@RULES.register("recall")
class RecallRule(nn.Module):
    FORMS = ("dt", "deq")

    def __init__(self, input_channels: int = 3, state_channels: int = 32, blocks: int = 2, form: str = "dt",
                 bound: float = 10.0):
        super().__init__()
        if form not in self.FORMS:
            raise ValueError(f"recall rule form {form!r}: choose one of {self.FORMS}")
        self.input_channels, self.state_channels, self.form = input_channels, state_channels, form
        self.bound = bound                # form "deq": states lie in [0, bound)
        self.recall = nn.Conv2d(input_channels + state_channels, state_channels, 3, padding=1, bias=False)
        self.blocks = nn.Sequential(*[ResidualBlock(state_channels) for _ in range(blocks)])

    def bind(self, u, conditioning):
        drive = conditioning.bind(self.recall.weight, None, u, padding=1)
        if self.form == "dt":
            return lambda z: self.blocks(drive(z))
        c = self.bound
        return lambda z: c * torch.tanh(self.blocks(drive(z)) / c)
