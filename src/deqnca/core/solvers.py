"""Ways to reach the state of a rule: roll it out for T steps, or solve z = f(z).

Every solver has one signature, borrowed from TorchDeq so that its solvers plug in unchanged:

    solve(f, z0, max_iter, tol, stop_mode="rel") -> (z, SolveStats)

`f` maps a state batch (B, C, H, W) to the next state. Residuals are reported per sample,
‖f(z) − z‖ (abs) and ‖f(z) − z‖ / ‖f(z)‖ (rel), measured at the state that is returned — never
at some other iterate — so the statistics say exactly how far from equilibrium the returned
state is.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from deqnca.core.registry import Registry
from deqnca.core.residuals import compile_residuals, compiled_failed, residual_count, residuals  # noqa: F401

Tensor = torch.Tensor
StateMap = Callable[[Tensor], Tensor]

_EPS = 1e-8


@dataclass
class SolveStats:
    nstep: int                      # f-evaluations spent by the solver (excluding the final measurement)
    abs_residual: Tensor            # (B,) ‖f(z) − z‖ at the returned z
    rel_residual: Tensor            # (B,) ‖f(z) − z‖ / ‖f(z)‖
    trace: list[float] = field(default_factory=list)   # batch-mean rel residual per step
    fallback: int = 0               # samples whose solver diverged and were replaced by a rollout
    sample_steps: Tensor | None = None  # (B,) f-evaluations until each sample first met tol, -1 if never
                                        # (fixed_point only: how long each input took, not the batch)

    def summary(self) -> dict:
        rel = self.rel_residual.float()
        finite = torch.isfinite(rel)
        return {
            "nstep": self.nstep,
            "rel_mean": rel[finite].mean().item() if finite.any() else float("nan"),
            "rel_max": rel.max().item(),
            "nonfinite": int((~finite).sum()),
            "fallback": self.fallback,
        }


def _measure(f: StateMap, z: Tensor) -> tuple[Tensor, Tensor]:
    with torch.no_grad():
        return residuals(f(z), z)


def _converged(abs_r: Tensor, rel_r: Tensor, tol: float, stop_mode: str) -> Tensor:
    return (rel_r if stop_mode == "rel" else abs_r) < tol


def rollout(f: StateMap, z0: Tensor, max_iter: int, tol: float = 0.0, stop_mode: str = "rel",
            measure: bool = True, rows_per_chunk: int | None = None, **_) -> tuple[Tensor, SolveStats]:
    """The NCA view: exactly `max_iter` steps, no early stop. Differentiable (BPTT) if grad is on.

    `rows_per_chunk`: roll the batch out that many samples at a time, where `f` can be restricted to part of
    its batch (`f.rows`, a `RowMap`). The same states up to the convolution's summation order; each chunk's
    state then stays in the CPU's cache between the convolution and the elementwise work after it, and
    autograd takes the backward pass chunk by chunk too (docs/speed.md measures it; training's CPU path
    chooses it by timing, `deqnca.engine.cpu_path`)."""
    if rows_per_chunk and z0.shape[0] > rows_per_chunk and hasattr(f, "rows"):
        parts = [rollout(f.rows(slice(i, i + rows_per_chunk)), z0[i:i + rows_per_chunk], max_iter, measure=measure)
                 for i in range(0, z0.shape[0], rows_per_chunk)]
        z = torch.cat([p[0] for p in parts])
        return z, SolveStats(max_iter, torch.cat([p[1].abs_residual for p in parts]),
                             torch.cat([p[1].rel_residual for p in parts]))
    z = z0
    for _ in range(max_iter):
        z = f(z)
    if measure:
        a, r = _measure(f, z)
    else:
        a = r = torch.full((z.shape[0],), float("nan"), device=z.device)
    return z, SolveStats(max_iter, a, r)


@torch.no_grad()
def fixed_point(f: StateMap, z0: Tensor, max_iter: int, tol: float = 1e-4, stop_mode: str = "rel",
                sync_every: int | None = None, check_every: int = 1, **_) -> tuple[Tensor, SolveStats]:
    """Picard iteration with per-sample stopping: a converged sample's state is the one it met tol at.

    Each sample's state (and its residuals) is kept, by its rows alone, at the step it meets tol; the batch
    keeps stepping as a whole until every sample has, and the kept rows are returned. (Freezing converged
    samples inside the batch instead costs a select over the whole state every step (docs/speed.md);
    the returned states are the same.)

    Stopping the whole batch needs a device-to-host read; on a GPU that read stalls the launch
    queue, so it happens every `sync_every` iterations (default 8 on CUDA, 1 on CPU where it is
    free). The kept states are the same either way; at most sync_every − 1 extra evaluations are
    spent once all have converged.

    `check_every` > 1 measures residuals only every that many steps: for a map with a cheap step whose
    fixed point is reached exactly (the geodesic maze rule, where the residual costs twice the step) the
    states are the same and the bookkeeping is paid 1/check_every as often; `sample_steps` is then
    rounded up to a check."""
    if sync_every is None:
        sync_every = 8 if z0.is_cuda else 1
    if check_every < 1:
        raise ValueError(f"fixed_point: check_every must be >= 1, got {check_every}")
    z = z0
    fz = f(z)
    trace = []
    steps = 1
    met_at = torch.full((z.shape[0],), -1, dtype=torch.long, device=z.device)
    kept = None                         # (z, abs, rel) of the samples that have met tol, at that step
    for i in range(max_iter - 1):
        if check_every == 1 or steps % check_every == 0:
            a, r = residuals(fz, z)
            new = _converged(a, r, tol, stop_mode) & (met_at < 0)
            kept = _keep(kept, new, z, a, r, by_rows=sync_every == 1)
            met_at = torch.where(new, steps, met_at)
            trace.append(torch.where(met_at >= 0, kept[2], r).mean() if kept is not None else r.mean())
            if check_every > 1 or (i + 1) % sync_every == 0 or sync_every == 1:
                if bool((met_at >= 0).all()):
                    break
        z = fz
        fz = f(z)
        steps += 1
    if kept is not None and bool((met_at >= 0).all()):
        z, a, r = kept                   # every sample met tol: the states it met it at
    else:
        a, r = residuals(fz, z)
        if kept is not None:
            done = met_at >= 0
            z = torch.where(done.view(-1, *[1] * (z.dim() - 1)), kept[0], z)
            a, r = torch.where(done, kept[1], a), torch.where(done, kept[2], r)
        met_at = torch.where(_converged(a, r, tol, stop_mode) & (met_at < 0), steps, met_at)
    return z, SolveStats(steps, a, r, torch.stack(trace).tolist() if trace else [], sample_steps=met_at)


def _keep(kept, new: Tensor, z: Tensor, a: Tensor, r: Tensor, by_rows: bool):
    """`kept` with the rows of the `new` samples replaced by their current state and residuals. `by_rows`
    (where reading the device is free, a CPU): copy those rows alone, the buffers allocated at the first
    sample that converges; otherwise a select over the whole state, which needs no read."""
    if not by_rows:
        if kept is None:
            return z.clone(), a.clone(), r.clone()
        view = new.view(-1, *[1] * (z.dim() - 1))
        return torch.where(view, z, kept[0]), torch.where(new, a, kept[1]), torch.where(new, r, kept[2])
    if not bool(new.any()):
        return kept
    if kept is None:
        kept = (torch.empty_like(z), torch.empty_like(a), torch.empty_like(r))
    rows = new.nonzero().squeeze(1)
    for buf, src in zip(kept, (z, a, r)):
        buf.index_copy_(0, rows, src.index_select(0, rows))
    return kept


def _flat(z: Tensor) -> Tensor:
    """(B, D) view in memory order: no copy for NCHW or channels-last states."""
    if z.dim() == 4 and not z.is_contiguous() and z.is_contiguous(memory_format=torch.channels_last):
        return z.permute(0, 2, 3, 1).reshape(z.shape[0], -1)
    return z.reshape(z.shape[0], -1)


def _unflat(v: Tensor, like: Tensor) -> Tensor:
    if like.dim() == 4 and not like.is_contiguous() and like.is_contiguous(memory_format=torch.channels_last):
        B, C, H, W = like.shape
        return v.view(B, H, W, C).permute(0, 3, 1, 2)
    return v.view(like.shape)


@torch.no_grad()
def anderson(f: StateMap, z0: Tensor, max_iter: int, tol: float = 1e-4, stop_mode: str = "rel",
             m: int = 6, lam: float = 1e-6, beta: float = 1.0, sync_every: int | None = None,
             **_) -> tuple[Tensor, SolveStats]:
    """Anderson acceleration (type II), batched, keeping each sample's lowest-residual iterate.

    The mixing weights α minimise ‖Σ αᵢ gᵢ‖ subject to Σ αᵢ = 1 over the last m residuals
    gᵢ = f(xᵢ) − xᵢ. TorchDeq solves the bordered (m+1)×(m+1) system with torch.linalg.solve, which
    raises "singular matrix" once residuals coincide (converged samples); here α = H⁻¹1 / 1ᵀH⁻¹1 with
    H = GGᵀ + λ·mean(diag)·I, a positive-definite system solved by Cholesky in float64 that cannot be
    singular. Histories live in preallocated ring buffers and only the new row of GGᵀ is computed per
    step. A sample whose iterate goes non-finite restarts from its best iterate. As in
    `fixed_point`, the whole-batch stopping test reads the device every `sync_every` iterations
    (default 4 on CUDA, 1 on CPU); the returned state is each sample's best iterate either way.
    """
    if sync_every is None:
        sync_every = 4 if z0.is_cuda else 1
    B = z0.shape[0]
    x = _flat(z0)
    D = x.shape[1]
    X = torch.zeros(B, m, D, dtype=x.dtype, device=x.device)
    F_ = torch.zeros_like(X)
    H = torch.zeros(B, m, m, dtype=torch.float64, device=x.device)
    fx = _flat(f(z0))
    best_x, best_r = x.clone(), torch.full((B,), float("inf"), device=x.device)
    trace = []
    steps = 1
    for k in range(max_iter):
        g = fx - x
        a = g.norm(dim=1)
        r = a / (fx.norm(dim=1) + _EPS)
        r = torch.where(torch.isfinite(r), r, torch.full_like(r, float("inf")))
        better = r < best_r
        best_x = torch.where(better[:, None], x, best_x)
        best_r = torch.where(better, r, best_r)
        finite = torch.isfinite(r)
        trace.append(torch.where(finite, r, 0).sum() / finite.sum())     # nan when none is finite
        if k == max_iter - 1:
            break
        if (k + 1) % sync_every == 0 or sync_every == 1:
            if bool(_converged(a, r, tol, stop_mode).all()):
                break
        slot, n = k % m, min(k + 1, m)
        X[:, slot], F_[:, slot] = x, fx
        G = F_[:, :n] - X[:, :n]                                          # (B, n, D)
        row = torch.bmm(G, g[:, :, None]).squeeze(-1).double()             # new row of GGᵀ
        H[:, slot, :n] = row
        H[:, :n, slot] = row
        Hn = H[:, :n, :n]
        Hn = Hn + lam * (Hn.diagonal(dim1=1, dim2=2).mean(-1)[:, None, None] + _EPS) \
            * torch.eye(n, dtype=torch.float64, device=x.device)
        L, info = torch.linalg.cholesky_ex(Hn)
        ones = torch.ones(B, n, 1, dtype=torch.float64, device=x.device)
        w = torch.cholesky_solve(ones, L)
        alpha = (w / w.sum(1, keepdim=True)).to(x.dtype)                    # (B, n, 1)
        ok = (info == 0) & torch.isfinite(alpha).all(dim=(1, 2))
        alpha = torch.where(ok[:, None, None], alpha, torch.zeros_like(alpha))
        mixed = beta * torch.bmm(alpha.transpose(1, 2), F_[:, :n]).squeeze(1)
        if beta != 1.0:
            mixed = mixed + (1 - beta) * torch.bmm(alpha.transpose(1, 2), X[:, :n]).squeeze(1)
        x_new = torch.where(ok[:, None], mixed, fx)                         # failed solve: plain step
        bad = ~torch.isfinite(x_new).all(dim=1)
        if bool(bad.any()):
            x_new = torch.where(bad[:, None], best_x, x_new)
        x = x_new
        fx = _flat(f(_unflat(x, z0)))
        steps += 1
    z = _unflat(best_x, z0)
    a, r = _measure(f, z)
    return z, SolveStats(steps, a, r, torch.stack(trace).tolist())


_TORCHDEQ_ORIGINAL: dict = {}     # what patch_torchdeq_masking replaced, kept for tests and comparisons


def _where_mixing(mask: Tensor, mask_var, orig_var):
    ref = mask_var if torch.is_tensor(mask_var) else orig_var
    return torch.where(mask.view(mask.shape[0], *[1] * (ref.dim() - 1)), mask_var, orig_var)


def patch_torchdeq_masking() -> None:
    """Fix TorchDeq 0.1.0's 'keep the lowest-residual iterate' so one diverged iterate cannot poison it.

    Its `solver.utils.batch_masked_mixing` selects with `mask * new + ~mask * old`; 0 · inf and
    0 · NaN are NaN, so once a Broyden iterate overflows (the inverse-Jacobian update divides by
    vᵀΔg, which passes through zero) the *kept* best state turns NaN too, even though it was never
    selected. On eq. (2) from noise at initialisation, 12 of 16 test images come back NaN after 40
    iterations, none with this fix (`benchmarks/broyden_eq2.py [--masking-fix]`). `torch.where`
    selects without arithmetic; nothing else changes (Broyden still runs off to huge states on
    eq. (2); docs/mnist.md). Idempotent; TorchDeq's solvers look the helper up at call time.
    """
    import torchdeq.solver.utils as utils

    if utils.batch_masked_mixing is not _where_mixing:
        _TORCHDEQ_ORIGINAL["batch_masked_mixing"] = utils.batch_masked_mixing
        utils.batch_masked_mixing = _where_mixing


def broyden(f: StateMap, z0: Tensor, max_iter: int, tol: float = 1e-3, stop_mode: str = "rel",
            max_norm: float | None = None, **kw) -> tuple[Tensor, SolveStats]:
    """TorchDeq's Broyden (the essay's solver), made NaN-safe.

    On eq. (2) TorchDeq's Broyden returns non-finite or exploded states: its low-rank
    inverse-Jacobian update divides by vᵀJu, which passes through zero, and on a residual rule
    z + tanh(·) a huge state has a tiny *relative* residual, so 'rel' stopping even rewards blow-up.
    A sample is declared diverged when it is non-finite or its norm exceeds what `max_iter` steps of
    a tanh-bounded rule could reach from z0 (‖z0‖ + max_iter·√D, every entry moving at most 1 per
    step; override with `max_norm`). Diverged samples are replaced by a plain rollout of the same
    length and counted in `fallback`, so one bad sample cannot poison a batch, a loss or a checkpoint.
    """
    from torchdeq.solver import broyden_solver

    patch_torchdeq_masking()
    with torch.no_grad():
        z, _, info = broyden_solver(f, z0, max_iter=max_iter, tol=tol, stop_mode=stop_mode)
        a, r = residuals(f(z), z)
        norm = z.flatten(1).norm(dim=1)
        if max_norm is None:
            limit = z0.flatten(1).norm(dim=1) + max_iter * z0[0].numel() ** 0.5
        else:
            limit = torch.full_like(norm, max_norm)
        bad = ~torch.isfinite(r) | ~torch.isfinite(norm) | (norm > limit)
        fallback = int(bad.sum())
        if fallback:
            zr = z0
            for _ in range(max_iter):
                zr = f(zr)
            keep = bad.view(-1, *[1] * (z.dim() - 1))
            z = torch.where(keep, zr, z)
            a, r = residuals(f(z), z)
        rel_trace = info.get("rel_trace")
        trace = rel_trace.float().mean(0).tolist() if torch.is_tensor(rel_trace) and rel_trace.dim() == 2 else []
        nstep = int(info["nstep"].max().item()) if torch.is_tensor(info.get("nstep")) else max_iter
    return z, SolveStats(nstep, a, r, trace, fallback)


SOLVERS = Registry("solver", "a function solve(f, z0, max_iter, tol, stop_mode='rel', **kw) -> (z, SolveStats)")
for _name, _fn in (("rollout", rollout), ("fixed_point", fixed_point), ("anderson", anderson),
                   ("broyden", broyden)):
    SOLVERS.register(_name, _fn)


def register_solver(name: str, fn: Callable) -> Callable:
    """Add a solver with the common signature; it becomes usable by name in every config.

    Args:
        name: the name configs use (``solver: name``).
        fn: ``solve(f, z0, max_iter, tol, stop_mode="rel", **kw) -> (z, SolveStats)``.

    Returns:
        `fn`.

    Examples:
        >>> register_solver("picard_twice", lambda f, z0, max_iter, tol=0.0, **kw: rollout(f, z0, 2 * max_iter))
        ... # doctest: +ELLIPSIS
        <function ...>
    """
    return SOLVERS.register(name, fn, replace=True)


def get_solver(name: str) -> Callable:
    """The solver function registered as `name` (``SOLVERS.names()``).

    Examples:
        >>> get_solver("rollout") is rollout
        True
    """
    return SOLVERS.get(name)
