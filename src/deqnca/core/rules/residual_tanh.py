"""The essay's rule, eq. (2): z <- z + tanh(K2 * concat(u, z))."""
from __future__ import annotations

import torch
from torch import nn

from deqnca.core.conditioning import RowMap


class ResidualTanhRule(nn.Module):
    """Eq. (2). Its fixed point is degenerate: at z* the tanh term is zero, so z* solves the *linear*
    system K2 * [u, z*] + b = 0 — the nonlinearity vanishes exactly at equilibrium (docs/mnist.md).

    `state_init_scale` multiplies PyTorch's default initialisation of the state half of K2; values
    < 1 make the initial map closer to the identity, which keeps Broyden's first iterations finite.
    """

    def __init__(self, input_channels: int = 16, state_channels: int = 32, kernel_size: int = 3,
                 state_init_scale: float = 1.0):
        super().__init__()
        self.input_channels, self.state_channels = input_channels, state_channels
        self.K2 = nn.Conv2d(input_channels + state_channels, state_channels, kernel_size,
                            padding=kernel_size // 2)
        if state_init_scale != 1.0:
            with torch.no_grad():
                self.K2.weight[:, input_channels:] *= state_init_scale

    def bind(self, u, conditioning):
        update = conditioning.bind(self.K2.weight, self.K2.bias, u, padding=self.K2.padding[0],
                                   activation=torch.tanh)
        return RowMap(lambda z, update: z + update(z), update)
