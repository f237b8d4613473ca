"""Per-sample residuals of a state, ‖f(z) − z‖ and ‖f(z) − z‖ / ‖f(z)‖: every solver's stopping test, eager or
compiled into one fused CPU kernel (`compile_residuals`)."""
from __future__ import annotations

import warnings

import torch

Tensor = torch.Tensor
_EPS = 1e-8


def _eager_residuals(fz: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
    diff = torch.linalg.vector_norm(fz - z, dim=tuple(range(1, z.dim())))
    return diff, diff / (torch.linalg.vector_norm(fz, dim=tuple(range(1, z.dim()))) + _EPS)


class _CompiledResiduals:
    """The same residuals as one fused CPU kernel compiled by torch.compile (Inductor): f(z) − z is never
    written out, and f(z) and z are read once (eager: three passes and a state-sized temporary). Off until
    `compile_residuals(True)`; a failed compile (no C++ compiler, an old torch) turns it off for the process."""

    enabled = False
    failed: str | None = None
    calls = 0
    _fn = None

    def __call__(self, fz: Tensor, z: Tensor):
        if self._fn is None:
            self._fn = torch.compile(_eager_residuals, dynamic=True)
        try:
            return self._fn(fz, z)
        except Exception as e:            # torch.compile raises many kinds; any of them means eager
            self.enabled, self.failed = False, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            warnings.warn(f"compiled residuals unavailable, eager from now on ({self.failed})", stacklevel=3)
            return _eager_residuals(fz, z)


_COMPILED = _CompiledResiduals()


def compile_residuals(enabled: bool = True) -> bool:
    """Process-wide, as a thread count is: compute every solver's per-sample residuals on the CPU with one
    compiled kernel (`enabled`) or eagerly. Equal to eager within float32 summation order (relative 1e-6);
    a stopping test at `tol` can then flip only for a residual that close to it. Training's CPU path times it
    and keeps it only where faster (`deqnca.engine.cpu_path`). Returns whether it is on (False after a
    failed compile)."""
    _COMPILED.enabled = bool(enabled) and _COMPILED.failed is None
    return _COMPILED.enabled


def _dispatch_mode() -> bool:
    """A tensor-dispatch mode is on (FlopCounterMode, say): compiling under it would leave the kernel eager."""
    return getattr(torch._C, "_len_torch_dispatch_stack", lambda: 0)() > 0


def compiled_failed() -> str | None:
    """Why compiling the residuals failed in this process (None: it did not, or was not tried)."""
    return _COMPILED.failed


def residual_count() -> int:
    """How many times `residuals` has run in this process (the CPU path's measure of a step's solves)."""
    return _COMPILED.calls


def residuals(fz: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
    """(‖f(z) − z‖, ‖f(z) − z‖ / ‖f(z)‖) per sample: one compiled pass on the CPU without autograd where
    `compile_residuals` is on, eager ops otherwise."""
    _COMPILED.calls += 1
    if _COMPILED.enabled and fz.device.type == "cpu" and not torch.is_grad_enabled() and not _dispatch_mode():
        return _COMPILED(fz, z)
    return _eager_residuals(fz, z)
