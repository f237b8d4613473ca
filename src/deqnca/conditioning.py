"""How the input enters the rule.

A rule perceives the concatenation [u, z] of input channels u and state channels z through one
convolution W = [W_u | W_z]. Two ways to evaluate it, identical in value:

- ReadOnlyChannels: the NCA view. u is a set of channels the rule can read but never writes;
  every step convolves the full [u, z] stack (what the essay's eq. (2) literally says).
- Injection: the DEQ view. W_u * u + b does not depend on z, so it is computed once per solve and
  added at every step ("input injection"); each step then convolves z alone — (C_u + C_z)/C_z
  times fewer FLOPs per step for the essay's model (48/32 = 1.5×).

Both return a `drive(z)` closure giving W * [u, z] + b.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class ReadOnlyChannels:
    name = "readonly"

    def bind(self, weight, bias, u, padding=1, padding_mode="zeros"):
        def drive(z):
            return F.conv2d(torch.cat([u, z], dim=1), weight, bias, padding=padding)
        return drive


class Injection:
    name = "injection"

    def bind(self, weight, bias, u, padding=1, padding_mode="zeros"):
        cu = u.shape[1]
        injected = F.conv2d(u, weight[:, :cu], bias, padding=padding)
        w_state = weight[:, cu:]

        def drive(z):
            return F.conv2d(z, w_state, padding=padding) + injected
        return drive


def make_conditioning(name: str):
    table = {"injection": Injection, "readonly": ReadOnlyChannels}
    if name not in table:
        raise ValueError(f"unknown conditioning {name!r}; choose one of {sorted(table)}")
    return table[name]()
