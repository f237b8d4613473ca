"""A rule written outside the package, registered by name: z <- (1 - a) z + a tanh(W * [u, z] + b)."""
import torch
from torch import nn

import deqnca


@deqnca.register_rule("leaky_tanh")
class LeakyTanhRule(nn.Module):
    def __init__(self, input_channels=16, state_channels=32, leak=0.5):
        super().__init__()
        self.conv = nn.Conv2d(input_channels + state_channels, state_channels, 3, padding=1)
        self.leak = leak

    def bind(self, u, conditioning):
        update = conditioning.bind(self.conv.weight, self.conv.bias, u, padding=1, activation=torch.tanh)
        return lambda z: (1 - self.leak) * z + self.leak * update(z)
