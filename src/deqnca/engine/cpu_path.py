"""Training's CPU path, chosen by measurement on the run's own training step.

At the start of a CPU run (`--cpu-path auto`, the default) the step the run is about to take — its real batch,
forward, loss and backward, no update — is timed on each allowed path, the paths interleaved so that a change
of load hits all alike: 1 thread or all cores; for a task that runs either layout (its `channels_last`
attribute "auto", as MNIST's option), NCHW or channels-last; for a task whose rollout can run part of a batch at
a time (its `chunk_candidates`), the whole batch or chunks of it (each chunk's state stays in cache between
the convolution and the elementwise work); for a step whose solves measure residuals at every iteration (a
solve to a tolerance, forward or adjoint), the solvers' stopping test eager or compiled into one fused kernel
(`deqnca.core.residuals.compile_residuals`); and with `--amp auto`, float32 or bfloat16 autocast where the CPU
has bfloat16 units (AMX-BF16 or AVX512-BF16). The fixed path — all cores (the trainer's
default), float32, the task's layout — is always timed, and another path is taken only when it is clearly
faster, so the choice is never slower than the fixed path by more than the measurement's noise. Weights,
buffers and random state are restored after the timing: the run is the one it would have been on the chosen
path.

The choice is the run's: recorded in config.json and every checkpoint, and a resumed run keeps it (a
thread count can change the last bits of a convolution's sums; a resumed run continues the same numbers).
`OMP_NUM_THREADS` in the environment fixes the thread count, as does `--cpu-path fixed`.
"""
from __future__ import annotations

import copy
import os
import statistics
from time import perf_counter

import torch

from deqnca.core import solvers
from deqnca.core.amp import amp_context

CLEARLY_FASTER = 1.05     # another path than the fixed one: at least this much faster (the noise of a timing)
BF16_FASTER = 1.10        # bf16 changes the numbers: only for a clear gain over the best float32 path
RESIDUALS_PER_STEP = 4    # a step measuring fewer residuals than this cannot gain from compiling them
COMPILE_REPAID_S = 200    # compiling takes seconds once a process: tried only for a run at least this long


def _label(path: tuple) -> str:
    threads, layout, amp, chunk, compiled = path
    layout = {"on": "channels-last", "off": "NCHW"}.get(layout, "the task's layout")
    chunk = f", rollout in chunks of {chunk}" if chunk else ""
    compiled = ", compiled stopping test" if compiled else ""
    return (f"{threads} thread{'s' if threads > 1 else ''}, {layout}, {'bf16' if amp == 'bf16' else 'float32'}"
            f"{chunk}{compiled}")


def fixed_path(task, amp: str, why: str) -> dict:
    """The path without measurement: the current thread count, float32 (or the `amp` given), the task's layout."""
    threads = torch.get_num_threads()
    return {"threads": threads, "layout": None, "amp": amp, "measured": {},
            "reason": f"fixed: {threads} thread{'s' if threads > 1 else ''}, "
                      f"{'bf16 autocast' if amp == 'bf16' else 'float32'}, the task's layout ({why})"}


def _candidates(task, amp_setting: str) -> list:
    from deqnca.engine.hardware import cpu_info, has_bf16_units

    info = cpu_info()
    current = torch.get_num_threads()
    threads = [current] + [t for t in sorted({1, info["usable_cores"]}) if t != current]
    layouts = [None]
    if getattr(task, "channels_last", None) == "auto":     # a task that runs either layout (MNIST's option)
        layouts = ["on", "off"]          # the task's CPU default first
    amps = {"auto": ["off", "bf16"] if has_bf16_units(info) else ["off"]}.get(amp_setting, [amp_setting])
    chunk = getattr(task, "rows_per_chunk", None)          # the run's own setting, for every path
    return [(t, lay, a, chunk, False) for a in amps for t in threads for lay in layouts]


def _timed_step(task, batch, amp):
    """A zero-argument callable: forward, loss and backward of `batch` under `amp`."""

    def step():
        with amp_context(amp, task.device):
            loss, _ = task.loss(batch)
        loss.backward()
        for p in task.model.parameters():
            p.grad = None
    return step


def _time_paths(task, paths, keep, batch_at, batches: dict, budget_s: float, rounds: int) -> tuple[dict, float]:
    """(median seconds of each path's step, the paths interleaved; residuals measured per step). `keep` is
    always timed in full, a path whose first call took over twice the fastest's keeps that call as its time."""
    start = perf_counter()
    steps, first = {}, {}
    counted = solvers.residual_count()
    for p in paths:                       # each path's first call: oneDNN builds its primitives (not kept)
        torch.set_num_threads(p[0])
        if p[1] not in batches:           # the run's next batch, once per layout
            if p[1] is not None:
                task.channels_last = p[1]
            batches[p[1]] = batch_at()
        steps[p] = _timed_step(task, batches[p[1]], p[2])
        _set_variant(task, p)
        if p[4]:                          # compiles the stopping test first (seconds, once a process)
            steps[p]()
        t = perf_counter()
        steps[p]()
        first[p] = perf_counter() - t
    per_step = (solvers.residual_count() - counted) / len(paths)
    timed = [p for p in paths if p == keep or first[p] <= 2 * min(first.values())]
    samples = {p: [first[p]] if p not in timed else [] for p in paths}
    for r in range(rounds):
        for p in timed:
            torch.set_num_threads(p[0])
            _set_variant(task, p)
            t = perf_counter()
            steps[p]()
            samples[p].append(perf_counter() - t)
        if r >= 1 and perf_counter() - start > budget_s:
            break
    return {p: statistics.median(v) for p, v in samples.items()}, per_step


def choose(task, amp_setting: str, batch_at, budget_s: float = 3.0, rounds: int = 3, steps_left: int | None = None,
           time_budget: float | None = None) -> dict:
    """The fastest allowed path for `task`'s training step (module docstring). `batch_at()` returns the
    batch the run takes next; `amp_setting` is --amp ("off", "bf16" or "auto"). Threads, layout and precision
    are timed together; then the chosen path against its variants: in chunks, for a task with `chunk_candidates`;
    with a compiled stopping test, for a step measuring residuals at every solver iteration in a run long enough
    to repay the compile (`steps_left` steps at the chosen path's time, at most `time_budget` seconds: at least
    COMPILE_REPAID_S).

    Returns {"threads", "layout" ("on"/"off" for channels-last, None: the task's), "amp" ("off"/"bf16"),
    "rows_per_chunk" (None: the whole batch at once), "compiled_residuals", "reason", "measured" (median seconds
    per path), "seconds" (what the choice cost)}."""
    start = perf_counter()
    paths = _candidates(task, amp_setting)
    fixed = paths[0]
    saved_state = copy.deepcopy(task.model.state_dict())
    rng = torch.get_rng_state()
    saved_layout = getattr(task, "channels_last", None)
    saved_chunk = getattr(task, "rows_per_chunk", None)
    saved_compiled = solvers.compile_residuals(False)
    previous_threads = torch.get_num_threads()
    try:
        batches = {}
        times, residuals_per_step = _time_paths(task, paths, fixed, batch_at, batches, budget_s, rounds)
        best = min((p for p in paths if p[2] != "bf16"), key=times.get)
        if times[best] * CLEARLY_FASTER > times[fixed]:
            best = fixed
        fastest16 = min((p for p in paths if p[2] == "bf16"), key=times.get, default=None)
        if fastest16 is not None and times[fastest16] * BF16_FASTER <= times[best]:
            best = fastest16
        variants = [(*best[:3], c, False) for c in (None, *getattr(task, "chunk_candidates", ())) if c != best[3]]
        run_s = min(times[best] * steps_left if steps_left is not None else float("inf"), time_budget or float("inf"))
        if residuals_per_step >= RESIDUALS_PER_STEP and run_s >= COMPILE_REPAID_S and solvers.compile_residuals(True):
            variants.append((*best[:4], True))
        if variants:
            both, _ = _time_paths(task, [best, *variants], best, batch_at, batches, budget_s, rounds)
            scale = times[best] / both[best]        # in the first timing's terms, by the same-round ratio
            times.update({p: both[p] * scale for p in variants})
            fastest = min(variants, key=times.get)
            if times[fastest] * CLEARLY_FASTER <= times[best] and not (fastest[4] and solvers.compiled_failed()):
                best = fastest
    finally:
        torch.set_num_threads(previous_threads)
        task.model.load_state_dict(saved_state)
        torch.set_rng_state(rng)
        if saved_layout is not None:
            task.channels_last = saved_layout
        _set_chunk(task, saved_chunk)
        solvers.compile_residuals(saved_compiled)
    parts = [f"{_label(best)}" + ("" if best == fixed else
                                  f", {times[fixed] / times[best]:.2f}× as fast as the fixed path ({_label(fixed)})")]
    parts += [f"{_label(p)}: {times[p] / times[best]:.2f}× its time" for p in times if p not in (best, fixed)]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return {"threads": best[0], "layout": best[1], "amp": best[2], "rows_per_chunk": best[3],
            "compiled_residuals": best[4],
            "reason": f"measured on this run's step: {'; '.join(parts)}; load {load:.1f}",
            "measured": {_label(p): times[p] for p in times}, "seconds": perf_counter() - start}


def apply(task, path: dict) -> None:
    """Put `path` in force for the run: its thread count and, for a task that runs either layout (a
    `channels_last` attribute, "auto" until chosen), its layout."""
    torch.set_num_threads(path["threads"])
    if path.get("layout") is not None and hasattr(task, "channels_last"):
        task.channels_last = path["layout"]
    if "rows_per_chunk" in path:
        _set_chunk(task, path["rows_per_chunk"])
    if "compiled_residuals" in path:
        solvers.compile_residuals(path["compiled_residuals"])


def _set_variant(task, path: tuple) -> None:
    _set_chunk(task, path[3])
    solvers.compile_residuals(path[4])


def _set_chunk(task, rows):
    if hasattr(task, "rows_per_chunk"):
        task.rows_per_chunk = rows
