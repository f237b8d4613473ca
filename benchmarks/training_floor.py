"""How close a training step comes to this CPU's floor: the rule's convolution alone, forward and backward.

The floor is the best measured throughput of the rule's 32→32 3×3 convolution, forward and backward (input and
weight gradients), at the training batch (64 × 28×28), float32, on `--threads` threads, in the faster of the
two layouts. Each preset's training step — the real batch, forward, loss and backward (the 15k-parameter
update, microseconds, left out so that every timed step sees the same weights and takes the same solver
steps) — is timed in the same rounds, the conv and the steps interleaved so that a change of load hits all
alike. A step's FLOPs are counted by torch's FlopCounterMode on the same step (convolutions and matrix
products, forward and backward); its fraction of the floor is (FLOPs / its time) / the floor's GFLOP/s. The
self-classifying digits' and the growing NCA's training steps (`--tasks`) are timed in the same rounds, as
their JAX peer benchmarks time them, against the same floor: this machine's best 3×3 convolution.

Where the CPU has bfloat16 units (AMX-BF16 or AVX512-BF16) each step is also timed under bf16 autocast and
its gain printed; elsewhere only with `--bf16 on`, marked as emulated (its seconds-long steps, interleaved
with the others, would also slow the rows after them). Each preset's fair peer
is timed in the same rounds — the same model written as its community writes it: the essay's eq. (2) in plain
PyTorch (a convolution of the concatenation [u, z], NCHW), the equilibrium model through TorchDeq's `get_deq`
(its Picard solver, implicit differentiation) — and deqnca's speed-up over it is printed (its time over the
faster of deqnca's float32 rows). The essay step is also timed with its rollout in chunks of 16, the
equilibrium step with its solves' stopping test compiled (`deqnca.core.solvers.compile_residuals`): choices
training's CPU path may make. Freed memory is kept for reuse as training keeps it
(`deqnca.engine.hardware.retain_freed_memory`).

    python benchmarks/training_floor.py --tasks --json-out results/speed/training_floor.json  # MNIST
    python benchmarks/training_floor.py --presets --tasks cells grow --json-out results/speed/training_floor_tasks.json
    python benchmarks/training_floor.py --quick --tasks  # MNIST only, batch 16, two rounds
    python benchmarks/training_floor.py --profile essay  # where one step's time goes (torch.profiler)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from datetime import date
from functools import cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from deqnca.core import solvers
from deqnca.core.amp import amp_context
from deqnca.engine import hardware
from deqnca.tasks.mnist.config import preset
from deqnca.tasks.mnist.evaluate import as_layout
from deqnca.tasks.mnist.model import EquilibriumModel

PRESETS = ("essay", "equilibrium")
OTHER_TASKS = ("cells", "grow")       # their engine steps as their JAX peer benchmarks time them


def other_task_step(name: str):
    """The self-classifying article step (benchmarks/cells_jax_peer.py) or the growing NCA's step with 80 CA
    steps every time (benchmarks/grow_jax_peer.py; it draws 64-96 otherwise, and a step's FLOPs would vary)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    if name == "cells":
        from cells_jax_peer import DeqncaSide
        side = DeqncaSide()
    else:
        from grow_jax_peer import DeqncaSide
        side = DeqncaSide(min_steps=80, max_steps=80)
    return side.step


def conv_floor_step(batch: int, channels: int, size: int, channels_last: bool):
    """(callable, FLOPs): the rule's convolution forward and backward (input and weight gradients)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, size, size, generator=g).contiguous(memory_format=fmt).requires_grad_()
    w = (torch.randn(channels, channels, 3, 3, generator=g) * 0.05).contiguous(memory_format=fmt).requires_grad_()
    grad = torch.randn(batch, channels, size, size, generator=g).contiguous(memory_format=fmt)

    def step():
        y = F.conv2d(x, w, padding=1)
        y.backward(grad)
        x.grad = w.grad = None
    return step, 3 * 2 * channels * channels * 9 * size * size * batch


@cache
def first_images(batch: int):
    """(x, y): the first `batch` MNIST training images and labels, read once for every step built here."""
    from deqnca.data.idx import load_mnist

    x, y = load_mnist(split="train")
    return x[:batch].float(), y[:batch]


def training_step(name: str, batch: int, amp: str, seed: int = 0, channels_last: bool = True,
                  compiled_residuals: bool = False):
    """(callable, model): `name`'s training step on `batch` real-shaped images, channels-last, the same
    initial noise every call (the same solver steps), gradients dropped after the backward pass;
    `compiled_residuals`: with the solvers' stopping test compiled (on during this step only)."""
    torch.manual_seed(seed)
    model = EquilibriumModel(preset(name).model).train()
    x, y = first_images(batch)
    x = as_layout(x, "on" if channels_last else "off", "cpu")

    def step():
        gen = torch.Generator().manual_seed(seed)
        solvers.compile_residuals(compiled_residuals)
        try:
            with amp_context(amp, "cpu"):
                loss, _ = model.loss(x, y, generator=gen)
            loss.backward()
        finally:
            solvers.compile_residuals(False)
        for p in model.parameters():
            p.grad = None
    return step, model


def plain_pytorch_essay_step(batch: int, seed: int = 0):
    """The fair peer of the `essay` step: eqs. (1)-(2) as a PyTorch user writes them — nn.Conv2d on the
    concatenation [u, z] (eq. 2 literally), NCHW, 16 steps unrolled, autograd through them; the same
    shapes, initialisation scale and read-out (pool, 32 hidden units, 10 classes)."""
    from torch import nn

    torch.manual_seed(seed)
    K1, K2 = nn.Conv2d(1, 16, 3, padding=1), nn.Conv2d(48, 32, 3, padding=1)
    head = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10))
    with torch.no_grad():
        K2.weight[:, 16:] *= 0.1
    x, y = first_images(batch)
    params = [*K1.parameters(), *K2.parameters(), *head.parameters()]

    def step():
        u = torch.relu(K1(x))
        z = torch.randn(batch, 32, 28, 28, generator=torch.Generator().manual_seed(seed))
        for _ in range(16):
            z = z + torch.tanh(K2(torch.cat([u, z], 1)))
        F.cross_entropy(head(z.mean((2, 3))), y).backward()
        for p in params:
            p.grad = None
    return step


def torchdeq_equilibrium_step(batch: int, seed: int = 0):
    """The fair peer of the `equilibrium` step: the same model (deqnca's weights, its γ-normalised W_z, its
    read-out) solved the way a TorchDeq user writes it — `get_deq(ift=True)` with TorchDeq's own Picard
    solver forward and backward at the preset's tolerance and caps, the map a plain closure, NCHW."""
    from torchdeq import get_deq

    torch.manual_seed(seed)
    model = EquilibriumModel(preset("equilibrium").model).train()
    deq = get_deq(ift=True, f_solver="fixed_point_iter", f_max_iter=100, f_tol=1e-4, f_stop_mode="rel",
                  b_solver="fixed_point_iter", b_max_iter=100, b_tol=1e-4, b_stop_mode="rel")
    x, y = first_images(batch)
    rule = model.rule

    def step():
        u = torch.relu(model.K1(x))
        w = rule.state_weight()
        injected = F.conv2d(u, rule.K2.weight[:, :rule.input_channels], rule.K2.bias, padding=1)
        z0 = torch.randn(batch, 32, 28, 28, generator=torch.Generator().manual_seed(seed))
        zs, _ = deq(lambda z: torch.tanh(F.conv2d(z, w, padding=1) + injected), z0)
        model.readout.loss(zs[-1], x, y)[0].backward()
        for p in model.parameters():
            p.grad = None
    return step


PEERS = {"essay": ("plain PyTorch, eq. (2) as written", plain_pytorch_essay_step),
         "equilibrium": ("TorchDeq get_deq(ift=True), Picard", torchdeq_equilibrium_step)}


def count_flops(step) -> int:
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def profile(name: str, batch: int, rows: int = 18) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    step, _ = training_step(name, batch, "off")
    step()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def measure(a) -> dict:
    info = hardware.cpu_info()
    bf16_units = hardware.has_bf16_units(info)
    paths = {}
    for cl in (True, False):
        fn, flops = conv_floor_step(a.batch, 32, 28, cl)
        paths[f"conv {'channels-last' if cl else 'NCHW'}"] = (fn, flops)
    with_bf16 = a.bf16 == "on" or (a.bf16 == "auto" and bf16_units)
    for name in a.presets:
        fn, _ = training_step(name, a.batch, "off")
        fn()                                      # oneDNN builds its primitives on the first call
        paths[f"{name} float32"] = (fn, count_flops(fn))
        if name == "essay":                       # the rollout in chunks, the training CPU path's other choice
            fn, model = training_step(name, a.batch, "off")
            model.solver_kw["rows_per_chunk"] = 16
            fn()
            paths["essay float32, chunks of 16"] = (fn, count_flops(fn))
        if name == "equilibrium":                 # its solves' stopping test compiled, the CPU path's other choice
            fn, _ = training_step(name, a.batch, "off", compiled_residuals=True)
            fn()                                  # compiles (seconds)
            paths["equilibrium float32, compiled stopping test"] = (fn, count_flops(fn))
        if with_bf16:
            fn, _ = training_step(name, a.batch, "bf16")
            fn()
            paths[f"{name} bf16"] = (fn, count_flops(fn))
        label, build = PEERS[name]
        fn = build(a.batch)
        fn()
        paths[f"{name} peer: {label}"] = (fn, count_flops(fn))
    for name in a.tasks:
        fn = other_task_step(name)
        fn()
        paths[f"{name} float32"] = (fn, count_flops(fn))
    for fn, _ in paths.values():
        fn()
    times = {k: [] for k in paths}
    loads = []
    for _ in range(a.rounds):
        for k, (fn, _) in paths.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
        loads.append(os.getloadavg()[0])
    med = {k: statistics.median(v) for k, v in times.items()}
    gflops = {k: paths[k][1] / med[k] / 1e9 for k in paths}
    floor_key = max((k for k in paths if k.startswith("conv")), key=gflops.get)
    floor = gflops[floor_key]
    rows = {}
    for k in paths:
        rows[k] = {"seconds": med[k], "gflop": paths[k][1] / 1e9, "gflops": gflops[k],
                   "fraction_of_floor": gflops[k] / floor, "spread": [min(times[k]), max(times[k])]}
    for name in a.presets:
        if f"{name} bf16" in rows:
            rows[f"{name} bf16"]["gain_over_float32"] = med[f"{name} float32"] / med[f"{name} bf16"]
        peer = f"{name} peer: {PEERS[name][0]}"
        rows[peer]["peer_over_deqnca"] = med[peer] / min(med[k] for k in rows if k.startswith(f"{name} float32"))
    return {"benchmark": "training_floor", "date": date.today().isoformat(), "torch": torch.__version__,
            "cpu": info["model"], "bf16_units": bf16_units,
            "threads": torch.get_num_threads(), "batch": a.batch, "rounds": a.rounds,
            "load": {"min": min(loads), "max": max(loads)}, "floor": {"path": floor_key, "gflops": floor},
            "rows": rows}


def report(r: dict) -> str:
    units = "bf16 units" if r["bf16_units"] else "no bf16 units: bf16 is emulated here"
    lines = [f"{r['cpu']} ({units}); torch {r['torch']}; {r['threads']} thread(s); batch {r['batch']}; "
             f"{r['rounds']} interleaved rounds; load {r['load']['min']:.1f}–{r['load']['max']:.1f}; {r['date']}",
             f"floor: {r['floor']['path']}, forward + backward, {r['floor']['gflops']:.1f} GFLOP/s", "",
             "| path | ms | GFLOP | GFLOP/s | fraction of the floor | bf16 gain | deqnca's speed-up over the peer |",
             "|---|---|---|---|---|---|---|"]
    for k, row in r["rows"].items():
        gain = f"{row['gain_over_float32']:.2f}×" if "gain_over_float32" in row else ""
        peer = f"{row['peer_over_deqnca']:.2f}×" if "peer_over_deqnca" in row else ""
        lines.append(f"| {k} | {1e3 * row['seconds']:.1f} | {row['gflop']:.2f} | {row['gflops']:.1f} | "
                     f"{100 * row['fraction_of_floor']:.0f}% | {gain} | {peer} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--presets", nargs="*", default=list(PRESETS), choices=PRESETS)
    p.add_argument("--tasks", nargs="*", default=list(OTHER_TASKS), choices=OTHER_TASKS,
                   help="other tasks' training steps, at their own batch (default: both)")
    p.add_argument("--bf16", choices=("auto", "on", "off"), default="auto",
                   help="time the bf16 autocast steps: auto where the CPU has bfloat16 units (default), on: always")
    p.add_argument("--quick", action="store_true", help="batch 16, 2 rounds")
    p.add_argument("--profile", choices=PRESETS, help="print where one step of this preset spends its time")
    p.add_argument("--json-out", type=Path)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    hardware.retain_freed_memory()                # as `deqnca train` does on a CPU
    if a.quick:
        a.batch, a.rounds = 16, 2
    if a.profile:
        profile(a.profile, a.batch)
        return 0
    r = measure(a)
    print(report(r))
    if a.json_out:
        a.json_out.parent.mkdir(parents=True, exist_ok=True)
        a.json_out.write_text(json.dumps(r, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
