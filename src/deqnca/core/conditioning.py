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
rules use so that any conditioning fits any rule; it returns z's dtype, so that under bfloat16 autocast the
state stays float32 (and an implicit gradient's backward pass, outside autocast, gets the state it solved).
The conditioned map is a `RowMap`: `f.rows(i)` is the same map for samples i of the batch alone, which a
solver uses to work on part of a batch (`rollout(..., rows_per_chunk=)`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from deqnca.core.registry import Registry

CONDITIONINGS = Registry("conditioning", "an object with bind(weight, bias, u, padding=, activation=)")


_IN_PLACE = {torch.tanh: torch.tanh_, torch.relu: torch.relu_, torch.sigmoid: torch.sigmoid_}


class RowMap:
    """A map z -> z' bound to one batch, `fn(z, *per_sample)`, whose batch-bound tensors (one row per sample;
    or other RowMaps) are passed in rather than closed over, so that `rows(i)` gives the map of samples i.

    Examples:
        >>> f = RowMap(lambda z, c: z + c, torch.arange(3.0).view(3, 1))
        >>> f.rows(slice(1, 3))(torch.zeros(2, 1)).flatten().tolist()
        [1.0, 2.0]
    """

    def __init__(self, fn, *per_sample):
        self.fn, self.per_sample = fn, per_sample

    def __call__(self, z):
        return self.fn(z, *self.per_sample)

    def rows(self, index) -> RowMap:
        return RowMap(self.fn, *(t.rows(index) if isinstance(t, RowMap) else t[index] for t in self.per_sample))


class ReadOnlyChannels:
    name = "readonly"

    def bind(self, weight, bias, u, padding=1, activation=None):
        def drive(z, u):
            return F.conv2d(torch.cat([u, z], dim=1), weight, bias, padding=padding)
        if activation is None:
            return RowMap(drive, u)
        return RowMap(lambda z, u: activation(drive(z, u)).to(z.dtype), u)


class Injection:
    name = "injection"

    def bind(self, weight, bias, u, padding=1, activation=None):
        cu = u.shape[1]
        injected = F.conv2d(u, weight[:, :cu], bias, padding=padding)
        w_state = weight[:, cu:]

        def drive(z, injected):
            return F.conv2d(z, w_state, padding=padding) + injected
        if activation is None:
            return RowMap(drive, injected)
        in_place = _IN_PLACE.get(activation)
        if in_place is None:
            return RowMap(lambda z, injected: activation(drive(z, injected)).to(z.dtype), injected)

        def conditioned(z, injected):
            # in place on the convolution's output, which its backward pass does not keep: two fewer passes
            # over a fresh state-sized tensor per step (docs/speed.md, "What changed")
            return in_place(F.conv2d(z, w_state, padding=padding).add_(injected)).to(z.dtype)
        return RowMap(conditioned, injected)


class Additive:
    name = "additive"

    def bind(self, weight, bias, u, padding=1, activation=None):
        if activation is None:
            raise ValueError("additive conditioning adds the input after the rule's nonlinearity; "
                             "bind it with activation=...")
        cu = u.shape[1]
        injected = F.conv2d(u, weight[:, :cu], padding=padding)
        w_state = weight[:, cu:]
        return RowMap(lambda z, injected: (activation(F.conv2d(z, w_state, bias, padding=padding)) + injected)
                      .to(z.dtype), injected)


for _cls in (Injection, ReadOnlyChannels, Additive):
    CONDITIONINGS.register(_cls.name, _cls)


def make_conditioning(name: str):
    """The conditioning registered as `name` (``CONDITIONINGS.names()``), instantiated.

    Examples:
        >>> make_conditioning("injection").name
        'injection'
    """
    return CONDITIONINGS.build(name)
