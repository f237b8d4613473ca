"""How the input enters the rule.

A rule applies a nonlinearity σ to a convolution W = [W_u | W_z] of input channels u and state z.
Three ways for u to enter; the first two are identical in value, the third is a different model:

- ReadOnlyChannels ("superposition", the NCA convention): u is a stack of channels the rule reads
  but never writes; every step convolves the full [u, z] stack — σ(W * [u, z] + b), eq. (2) literally.
- Injection: the same value, computed the DEQ way: W_u * u + b does not depend on z, so it is
  computed once per solve and added inside σ at every step; each step convolves z alone —
  (C_u + C_z)/C_z times fewer FLOPs per step (48/32 = 1.5× for the essay's model).
- Additive ("residual-style" injection, the essay's other reading): the input is added to the state
  *after* the nonlinearity, σ(W_z * z + b) + W_u * u. Same weights and parameter count as the
  other two, but u now shifts the state directly instead of steering which cells saturate.

`bind(weight, bias, u)` returns `drive(z)`, the pre-activation W * [u, z] + b (injection, read-only);
`bind(..., activation=σ)` returns the whole conditioned map z -> σ(...) (+ W_u * u), which is what
rules use so that any conditioning fits any rule.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from deqnca.core.registry import Registry

CONDITIONINGS = Registry("conditioning", "an object with bind(weight, bias, u, padding=, activation=)")


class ReadOnlyChannels:
    name = "readonly"

    def bind(self, weight, bias, u, padding=1, activation=None):
        def drive(z):
            return F.conv2d(torch.cat([u, z], dim=1), weight, bias, padding=padding)
        return drive if activation is None else (lambda z: activation(drive(z)))


class Injection:
    name = "injection"

    def bind(self, weight, bias, u, padding=1, activation=None):
        cu = u.shape[1]
        injected = F.conv2d(u, weight[:, :cu], bias, padding=padding)
        w_state = weight[:, cu:]

        def drive(z):
            return F.conv2d(z, w_state, padding=padding) + injected
        return drive if activation is None else (lambda z: activation(drive(z)))


class Additive:
    name = "additive"

    def bind(self, weight, bias, u, padding=1, activation=None):
        if activation is None:
            raise ValueError("additive conditioning adds the input after the rule's nonlinearity; "
                             "bind it with activation=...")
        cu = u.shape[1]
        injected = F.conv2d(u, weight[:, :cu], padding=padding)
        w_state = weight[:, cu:]
        return lambda z: activation(F.conv2d(z, w_state, bias, padding=padding)) + injected


for _cls in (Injection, ReadOnlyChannels, Additive):
    CONDITIONINGS.register(_cls.name, _cls)


def make_conditioning(name: str):
    """The conditioning registered as `name` (``CONDITIONINGS.names()``), instantiated.

    Examples:
        >>> make_conditioning("injection").name
        'injection'
    """
    return CONDITIONINGS.build(name)
