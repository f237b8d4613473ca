"""Peak memory of ONE growing-NCA training step, BPTT vs equilibrium (implicit), at 64/256/1024 steps.

    PYTHONPATH=src python benchmarks/grow_memory.py --device cpu  [--max-gib 12]
    PYTHONPATH=src python benchmarks/grow_memory.py --device cuda

One step = forward (BPTT: N steps of the stochastic rule with autograd; implicit: N growth steps without
autograd, then the solver and the implicit backward), backward, per-parameter normalisation and Adam, on
the 72×72 lizard at batch 8. Measured as the growth of memory over what was allocated just before the
step:
  cuda  torch.cuda.max_memory_allocated() − memory_allocated() before the step (after a reset)
  cpu   each config in a fresh subprocess: peak RSS (ru_maxrss) after the step − current RSS before it.
        A warm-up step on a 8×8 grid loads the kernels first; its peak is far below the step's, so the
        peak RSS reached during the step is the step's own. Includes allocator slack, so it is an
        upper bound on the tensors' peak.
On CPU a BPTT config whose memory, extrapolated linearly from the measured smaller horizons, exceeds
--max-gib is not run (the machine is shared): the table says so instead of a number.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HORIZONS = (64, 256, 1024)
GIB = 1024 ** 3


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def one_step(trainer: str, steps: int, device: str, batch: int, equilibrium: dict | None = None) -> dict:
    """`equilibrium`: GrowConfig settings of the equilibrium trainer (gradient, phantom_k, ...)."""
    import torch

    from deqnca.tasks.grow.model import make_forward, normalise_gradients
    from deqnca.tasks.grow.rule import GrowingNCARule
    from deqnca.tasks.grow.targets import load_target
    from deqnca.tasks.grow.task import _EQUILIBRIUM_KEYS, GrowConfig

    def training_step(rule, forward, optimizer, z0, target, steps, gen):
        """The grow task's step as the engine runs it (forward, backward, normalisation, Adam)."""
        total, _ = forward(rule, z0, target, steps, gen)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        normalise_gradients(rule.parameters())
        optimizer.step()

    torch.manual_seed(0)
    rule = GrowingNCARule().to(device)
    with torch.no_grad():   # a rule that does something, so the alive masks and solver are exercised
        rule.w2.weight.normal_(std=0.02)
    optimizer = torch.optim.Adam(rule.parameters(), lr=2e-3)
    equilibrium = equilibrium or {}
    cfg = GrowConfig(trainer=trainer, **equilibrium)
    forward = make_forward(trainer, **{k: getattr(cfg, k) for k in _EQUILIBRIUM_KEYS})
    target = load_target("lizard").to(device)[None]
    gen = torch.Generator(device=device).manual_seed(0)
    small = target[..., :8, :8]
    training_step(rule, forward, optimizer, rule.seed(batch, 8, 8, device=device), small, 2, gen)   # warm-up
    z0 = rule.seed(batch, *target.shape[-2:], device=device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _rss_bytes()
    t = time.perf_counter()
    training_step(rule, forward, optimizer, z0, target, steps, gen)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    return {"trainer": trainer, "steps": steps, **(equilibrium if trainer == "implicit" else {"gradient": "bptt"}),
            "device": device, "batch": batch,
            "peak_gib": peak / GIB, "seconds": time.perf_counter() - t}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--horizons", type=int, nargs="+", default=list(HORIZONS))
    ap.add_argument("--max-gib", type=float, default=12.0, help="CPU: skip BPTT configs predicted above this")
    ap.add_argument("--out", default="out/grow_memory.json")
    ap.add_argument("--trainers", nargs="+", default=["implicit", "bptt"], choices=["implicit", "bptt"])
    ap.add_argument("--gradient", default="phantom", choices=["phantom", "implicit"],
                    help="the equilibrium trainer's backward pass (default: the trainer's default, phantom)")
    ap.add_argument("--phantom-k", type=int, default=8, help="the phantom gradient's differentiated steps")
    ap.add_argument("--solver-iter", type=int, default=32,
                    help="solver steps after the growth (the windowed recipe of docs/grow.md uses 1)")
    ap.add_argument("--phantom-map", default="expected", choices=["expected", "stochastic"],
                    help="what the solver and the phantom steps iterate (the windowed recipe: stochastic)")
    ap.add_argument("--one", nargs=2, metavar=("TRAINER", "STEPS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    equilibrium = {"gradient": args.gradient, "phantom_k": args.phantom_k, "solver_iter": args.solver_iter,
                   "phantom_map": args.phantom_map}
    if args.one:
        print(json.dumps(one_step(args.one[0], int(args.one[1]), args.device, args.batch, equilibrium)))
        return 0
    rows = []
    for trainer in args.trainers:
        for steps in sorted(args.horizons):
            measured = [r for r in rows if r["trainer"] == trainer and r.get("peak_gib") is not None]
            if args.device == "cpu" and trainer == "bptt" and measured:
                last = measured[-1]
                predicted = last["peak_gib"] * steps / last["steps"]
                if predicted > args.max_gib:
                    rows.append({"trainer": trainer, "steps": steps, "device": args.device, "batch": args.batch,
                                 "peak_gib": None, "note": f"not run: ~{predicted:.0f} GiB predicted "
                                 f"(linear from {last['steps']} steps) > --max-gib {args.max_gib:g}"})
                    print(rows[-1], file=sys.stderr)
                    continue
            if args.device == "cpu":   # fresh process per config: ru_maxrss is a process-lifetime peak
                # the same command line (its settings included), measuring one config
                res = subprocess.run([sys.executable, *sys.argv, "--one", trainer, str(steps)],
                                     capture_output=True, text=True)
                if res.returncode:
                    rows.append({"trainer": trainer, "steps": steps, "device": "cpu", "batch": args.batch,
                                 "peak_gib": None, "note": f"failed: {res.stderr.strip().splitlines()[-1]}"})
                else:
                    rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
            else:
                import torch

                try:
                    rows.append(one_step(trainer, steps, args.device, args.batch, equilibrium))
                except torch.cuda.OutOfMemoryError:
                    rows.append({"trainer": trainer, "steps": steps, "device": args.device, "batch": args.batch,
                                 "peak_gib": None, "note": "CUDA out of memory"})
                    torch.cuda.empty_cache()
            print(rows[-1], file=sys.stderr)
    print(f"peak memory of one training step, 72×72 lizard, batch {args.batch}, device {args.device}")
    print(f"{'trainer':<10}{'steps':>7}{'peak GiB':>11}{'seconds':>10}  note")
    for r in rows:
        peak = f"{r['peak_gib']:.3f}" if r["peak_gib"] is not None else "—"
        secs = f"{r['seconds']:.1f}" if "seconds" in r else "—"
        print(f"{r['trainer']:<10}{r['steps']:>7}{peak:>11}{secs:>10}  {r.get('note', '')}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
