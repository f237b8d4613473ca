"""How gradients flow back through a solve: BPTT, implicit (IFT), or phantom.

A gradient strategy wraps a solver call: `strategy(f, solver, z0) -> (z, stats)`. The returned z
carries the gradient information to the parameters of `f`; the strategies differ in what they
store and what they approximate.

- BPTT differentiates the unrolled rollout: exact for the T-step NCA, memory grows with T.
- Implicit solves the adjoint fixed point (I − ∂f/∂z)ᵀ g = ∂L/∂z at z*: exact at equilibrium,
  memory independent of the number of forward steps (TorchDeq's IFT with our backward solver).
- Phantom(k) unrolls k damped steps from the (detached) solution: cheap, biased, robust.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from deqnca.core.registry import Registry
from deqnca.core.solvers import SolveStats, get_solver, rollout

GRADIENTS = Registry("gradient", "a class whose instances are called as strategy(f, solver, z0, **solver_kw) "
                     "-> (z, SolveStats)")


class BPTT:
    """Backpropagation through time: differentiate the unrolled rollout (solver "rollout" only).

    Examples:
        >>> z, stats = BPTT()(lambda z: 0.5 * z, rollout, torch.ones(1, 1, 2, 2), max_iter=3)
    """

    name = "bptt"

    def __call__(self, f, solver: Callable, z0, **solver_kw):
        if not torch.is_grad_enabled():      # inference: any solver may replay the rule
            return solver(f, z0, **solver_kw)
        if solver is not rollout:
            raise ValueError("gradient 'bptt' needs solver 'rollout' (other solvers are not differentiable "
                             "step by step); use gradient 'implicit' or 'phantom' with them")
        return solver(f, z0, **solver_kw)


class Implicit:
    """Implicit differentiation through TorchDeq's IFT autograd function."""

    name = "implicit"

    def __init__(self, b_solver: str = "fixed_point", b_max_iter: int = 30, b_tol: float = 1e-4):
        from torchdeq.grad import backward_factory

        self.b_solver_name = b_solver
        b_solve = get_solver(b_solver)
        self.last_backward: SolveStats | None = None

        def torchdeq_adapter(func, x0, **kw):
            z, stats = b_solve(func, x0, max_iter=b_max_iter, tol=b_tol, stop_mode="rel")
            return z, [], stats

        self._produce = backward_factory("ift", b_solver=torchdeq_adapter)

    def _record(self, stats):
        self.last_backward = stats

    def __call__(self, f, solver: Callable, z0, **solver_kw):
        with torch.no_grad():
            z_star, stats = solver(f, z0, **solver_kw)
        if not torch.is_grad_enabled():
            return z_star, stats
        z = self._produce(None, f, z_star.detach(), writer=self._record)[0]
        return z, stats


class Phantom:
    """k damped unrolled steps from the detached solution (TorchDeq's 'phantom gradient')."""

    name = "phantom"

    def __init__(self, k: int = 1, tau: float = 1.0):
        if k < 1:
            raise ValueError("phantom gradient needs k >= 1 steps")
        self.k, self.tau = k, tau

    def __call__(self, f, solver: Callable, z0, **solver_kw):
        with torch.no_grad():
            z, stats = solver(f, z0, **solver_kw)
        if not torch.is_grad_enabled():
            return z, stats
        return self.unroll(f, z.detach()), stats

    def unroll(self, f, z):
        """The k damped steps from z, differentiated."""
        for _ in range(self.k):
            z = self.tau * f(z) + (1 - self.tau) * z
        return z


for _cls in (BPTT, Implicit, Phantom):
    GRADIENTS.register(_cls.name, _cls)


def make_gradient(name: str, **kw):
    """The gradient strategy registered as `name` (``GRADIENTS.names()``), built with options `kw`.

    Examples:
        >>> make_gradient("phantom", k=4).k
        4
    """
    cls = GRADIENTS.get(name)
    try:
        return cls(**kw)
    except TypeError as e:
        raise ValueError(f"gradient {name!r} does not take these options ({e}); check gradient_kw") from None
