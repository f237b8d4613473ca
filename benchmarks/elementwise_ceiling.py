"""How close to the floor the MNIST training steps can come on this CPU: the elementwise work a rule step cannot
shed, at this machine's measured cost of a pass over a state, and the ways of fusing it, timed.

training_floor.py sets each step against the rule's convolution alone. But a step also reads and writes whole
states outside its convolutions — the injected input, tanh, the residual add, their gradients, the solver's
stopping test — and on one core those passes run at the cache's bandwidth, not at the convolution's FLOP rate.
This benchmark measures, at one thread and the training batch (64 × 32 × 28 × 28, channels-last, float32):

- the cost of one *stream* (a state read or written once) from an in-place add (three streams) and a copy
  into a fresh tensor (two), and the convolution's forward, input-gradient and full backward times;
- the fewest streams a perfectly fused step would still need per rule step — the essay's rollout: 5 forward
  (read the convolution's output, the injection and z; write tanh's output and the next z) and 7 backward
  (read the incoming gradient, tanh's output, the injection's running gradient and the convolution's input
  gradient; write the pre-activation gradient, the injection's gradient and the next gradient); the
  equilibrium solve: 4 per forward iteration (read the convolution's output, the injection and z; write f(z),
  the stopping test's norms taken in the same pass) and 6 per adjoint iteration — and from them each step's
  ceiling: its convolutions at the floor plus those streams, as a fraction of the floor;
- the fusions available without a custom kernel, each against its eager ops: the injection's add as oneDNN's
  convolution post-op (`torch.ops.mkldnn._convolution_pointwise.binary`; tanh cannot follow it there), the
  essay's add + tanh + add and the stopping test compiled by torch.compile (Inductor's C++ kernels).

    python benchmarks/elementwise_ceiling.py --json-out results/speed/elementwise_ceiling.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F

from deqnca.engine import hardware

STREAMS = {"essay": (5, 7), "equilibrium": (4, 6)}     # per forward step / per backward (adjoint) step


def _timed(fns: dict, rounds: int) -> dict:
    """Median seconds of each callable, interleaved over `rounds`."""
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def measure(batch: int, rounds: int) -> dict:
    g = torch.Generator().manual_seed(0)
    state = lambda: torch.randn(batch, 32, 28, 28, generator=g).contiguous(memory_format=torch.channels_last)
    z, inj, c, grad = state(), state(), state(), state()
    w = (torch.randn(32, 32, 3, 3, generator=g) * 0.05).requires_grad_()
    zg = z.clone().requires_grad_()
    y = torch.conv2d(zg, w, padding=1)
    post_op = getattr(getattr(torch.ops.mkldnn, "_convolution_pointwise", None), "binary", None)

    def essay_elementwise(c, inj, z):
        t = torch.tanh(c + inj)
        return t, z + t

    def stopping_test(fz, z):
        d = torch.linalg.vector_norm(fz - z, dim=(1, 2, 3))
        return d, d / (torch.linalg.vector_norm(fz, dim=(1, 2, 3)) + 1e-8)

    compiled_essay = torch.compile(essay_elementwise, dynamic=True)
    compiled_test = torch.compile(stopping_test, dynamic=True)
    fns = {
        "add_ in place (3 streams)": lambda: c.add_(inj),
        "copy to a fresh tensor (2 streams)": lambda: c.clone(),
        "conv forward": lambda: F.conv2d(z, w.detach(), padding=1),
        "conv forward + backward (input and weight)": lambda: torch.autograd.grad(F.conv2d(zg, w, padding=1),
                                                                                  (zg, w), grad),
        "conv input gradient alone (an adjoint iteration's)": lambda: torch.autograd.grad(y, zg, grad,
                                                                                          retain_graph=True),
        "essay elementwise, eager (add_, tanh_, add)": lambda: z + F.conv2d(z, w.detach(), padding=1)
        .add_(inj).tanh_(),
        "essay elementwise, torch.compile": lambda: compiled_essay(F.conv2d(z, w.detach(), padding=1), inj, z),
        "conv then add_ (eager)": lambda: F.conv2d(z, w.detach(), padding=1).add_(inj),
        "stopping test, eager": lambda: stopping_test(c, z),
        "stopping test, torch.compile": lambda: compiled_test(c, z),
    }
    if post_op is not None:
        fns["conv with the add as oneDNN post-op"] = lambda: post_op(z, inj, w.detach(), None, [1, 1], [1, 1],
                                                                     [1, 1], 1, "add", None, None, [], None)
    with torch.no_grad():
        for fn in (fns["essay elementwise, torch.compile"], fns["stopping test, torch.compile"]):
            fn()                                   # compile (seconds) before timing
    times = _timed(fns, rounds)
    stream = min(times["add_ in place (3 streams)"] / 3, times["copy to a fresh tensor (2 streams)"] / 2)
    conv_flops = 2 * 32 * 32 * 9 * 28 * 28 * batch
    floor = 3 * conv_flops / times["conv forward + backward (input and weight)"]
    ceilings = {}
    for name, (fwd_streams, bwd_streams) in STREAMS.items():
        # essay: 16 rollout steps, each a forward conv and a full backward; equilibrium: the forward iterations
        # and adjoint iterations the benchmark's step takes (training_floor.py's step: counted below)
        fwd_steps, bwd_steps = (16, 16) if name == "essay" else _equilibrium_iterations(batch)
        # the essay: a forward and a full backward (two convolutions' work) per step; the equilibrium step: one
        # convolution per forward or adjoint iteration, plus f(z*) with its full backward and TorchDeq's re-forward
        convs = fwd_steps + 2 * bwd_steps if name == "essay" else fwd_steps + bwd_steps + 4
        conv_s = convs * conv_flops / floor
        streams_s = (fwd_steps * fwd_streams + bwd_steps * bwd_streams) * stream
        ceilings[name] = {"forward_steps": fwd_steps, "backward_steps": bwd_steps, "conv_seconds_at_floor": conv_s,
                          "fewest_streams_seconds": streams_s, "ceiling_fraction": conv_s / (conv_s + streams_s)}
    return {"benchmark": "elementwise_ceiling", "date": date.today().isoformat(), "torch": torch.__version__,
            "cpu": hardware.cpu_info()["model"], "threads": torch.get_num_threads(), "batch": batch,
            "rounds": rounds, "seconds": times, "stream_seconds": stream,
            "stream_gb_per_s": z.numel() * 4 / stream / 1e9, "floor_gflops": floor / 1e9, "ceilings": ceilings}


def _equilibrium_iterations(batch: int) -> tuple[int, int]:
    """(forward, adjoint) solver iterations of training_floor.py's equilibrium step."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from training_floor import training_step

    step, model = training_step("equilibrium", batch, "off")
    step()
    return model.last_stats.nstep, model.gradient.last_backward.nstep


def report(r: dict) -> str:
    lines = [f"{r['cpu']}; torch {r['torch']}; {r['threads']} thread(s); batch {r['batch']}; {r['rounds']} rounds; "
             f"{r['date']}", f"one stream (a state read or written once): {1e3 * r['stream_seconds']:.3f} ms, "
             f"{r['stream_gb_per_s']:.1f} GB/s; the floor (conv forward + backward): {r['floor_gflops']:.1f} GFLOP/s",
             "", "| operation | ms |", "|---|---|"]
    lines += [f"| {k} | {1e3 * v:.3f} |" for k, v in r["seconds"].items()]
    lines += ["", "| step | forward / backward steps | convs at the floor, ms | fewest streams, ms | ceiling |",
              "|---|---|---|---|---|"]
    for k, c in r["ceilings"].items():
        lines.append(f"| {k} | {c['forward_steps']} / {c['backward_steps']} | {1e3 * c['conv_seconds_at_floor']:.0f} | "
                     f"{1e3 * c['fewest_streams_seconds']:.0f} | {100 * c['ceiling_fraction']:.0f}% |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=21)
    p.add_argument("--json-out", type=Path)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    hardware.retain_freed_memory()
    r = measure(a.batch, a.rounds)
    print(report(r))
    if a.json_out:
        a.json_out.parent.mkdir(parents=True, exist_ok=True)
        a.json_out.write_text(json.dumps(r, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
