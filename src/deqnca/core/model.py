"""The one model protocol: every model kind — the MNIST classifier, the growing NCA, the self-classifying
cells, the maze solver, a user's own — is a `CellularModel`.

What an NCA needs is three named parts (CAX's ``ComplexSystem``: named parts plus one step, iteration in
the base): the initial state, one step of the rule bound to its input, the read-out. What a DEQ needs
sits on top of the same step: `solve` finds its fixed point, with the gradient the kind's config names.
Iterating the step is `deqnca.rollout` (core/nca.py); nothing outside a kind asks which kind it is.

    @MODELS.register("my_kind")
    class MyModel(CellularModel):
        Config = MyConfig                               # a dataclass, read by the one strict loader
        def initial_state(self, x, generator=None): ...
        def step_map(self, x, generator=None): ...      # -> f, with f(z) the state one step later
        def read(self, z, x): ...

`MODELS` is keyed by the checkpoint's ``kind`` (the task that trained it), so `deqnca.load` builds any
checkpoint's model from its JSON alone.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from torch import nn

from deqnca.core.registry import Registry

MODELS = Registry("model kind", "a CellularModel subclass with its Config dataclass "
                  "(initial_state, step_map, read; solve on top)")

StateMap = Callable[[torch.Tensor], torch.Tensor]


class CellularModel(nn.Module):
    """A local, weight-tied rule with an input: iterate it (the NCA view) or solve it (the DEQ view).

    Subclasses set `Config` (the dataclass their checkpoints' ``model_config`` is read into) and implement
    `initial_state`, `step_map` and `read`; a kind trained as an equilibrium overrides `solve` to use its
    config's solver and gradient. ``model.config`` holds the config instance.
    """

    Config: ClassVar[type]

    def initial_state(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """z_0 for input `x` (noise, zeros, a seed cell — the kind's choice), drawn from `generator`."""
        raise NotImplementedError

    def step_map(self, x: torch.Tensor, generator: torch.Generator | None = None) -> StateMap:
        """The rule bound to input `x`: a function f with f(z) the state one step later (`generator`: the
        randomness of a stochastic rule, e.g. the growing NCA's fire rate)."""
        raise NotImplementedError

    def read(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The read-out of state `z` for input `x`: class logits, per-cell logits, RGBA, path logits."""
        raise NotImplementedError

    def solve(self, x: torch.Tensor, z0: torch.Tensor | None = None, generator: torch.Generator | None = None,
              **solver_kw):
        """(z, stats): the state the kind's solver reaches from `z0` (default: `initial_state`), differentiable
        by the kind's gradient. The base iterates the step `max_iter` times (default 100) with no gradient
        shortcut; equilibrium kinds override it with their config's solver and gradient."""
        from deqnca.core.solvers import rollout

        f = self.step_map(x, generator)
        z0 = self.initial_state(x, generator) if z0 is None else z0
        return rollout(f, z0, solver_kw.pop("max_iter", 100), **solver_kw)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None, **solver_kw) -> torch.Tensor:
        """The read-out at the state `solve` reaches."""
        z, _ = self.solve(x, generator=generator, **solver_kw)
        return self.read(z, x)

    def after_update(self) -> None:
        """Called by the engine after every optimiser step: the rule's own upkeep (e.g. a renormalisation),
        where the model has a rule that defines one (`after_step`); otherwise nothing."""
        rule = getattr(self, "rule", None)
        if callable(getattr(rule, "after_step", None)):
            rule.after_step()

    def describe(self) -> str:
        """One line for `deqnca info`: what the model is and what it computes."""
        return type(self).describe_config(self.config)

    @classmethod
    def describe_config(cls, config) -> str:
        """`describe` from the config alone (`deqnca info` reads a checkpoint's JSON, not its weights)."""
        return f"{cls.__name__} ({type(config).__name__})"
