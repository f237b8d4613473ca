"""Training and inference speed of deqnca's MNIST presets against plain TorchDeq, in the same run.

The baseline is what the essay describes, written the way a TorchDeq user would: eq. (2) as a
module, `torchdeq.get_deq(f_solver="broyden")` with TorchDeq's defaults (40 iterations, tol 1e-3,
1-step phantom gradient), NCHW tensors, SGD 0.005/0.9, batch 64, Gaussian-noise initial state.

    python benchmarks/mnist_speed.py --device cpu --batches 30
    python benchmarks/mnist_speed.py --device cuda --batches 0      # 0 = full epoch
    python benchmarks/mnist_speed.py --device cuda --presets essay,essay+graph,equilibrium \
        --train-full essay,equilibrium                               # + complete timed trainings

"+graph" times the trainer's CUDA-graph step (deqnca.engine.graphs) instead of the eager one, for the
presets whose step has a fixed shape (essay, equilibrium-fixed). "+bf16" runs the forward pass under
bfloat16 autocast, as `deqnca train --amp bf16` does (inference is timed in float32 either way).

The essay's Broyden baseline diverges (weights non-finite by its third SGD step), so it is timed at
its initial weights: each timed step is a full forward solve and backward pass without the update.

Prints a table and writes JSON (--json-out). Times are wall-clock per training batch (mean over
the timed batches after warm-up), scaled to the 938 batches of an epoch when --batches > 0.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from datetime import date

import torch
import torch.nn.functional as F
from torch import nn

from deqnca.core.amp import amp_context
from deqnca.data.idx import load_mnist
from deqnca.tasks.mnist.config import preset
from deqnca.tasks.mnist.evaluate import as_layout
from deqnca.tasks.mnist.model import EquilibriumModel


class PlainTorchDEQ(nn.Module):
    """Eqs. (1)-(2) written the way a TorchDeq user would — the baseline.

    `solver="broyden"` is the essay's setting with TorchDeq's defaults (40 iterations, tol 1e-3,
    abs stopping, 1-step phantom gradient). It cannot train: its best iterate is a blown-up state
    (eq. (2)'s residual is bounded by √D however large z gets, so 'lowest residual' does not rule
    blow-up out), and its weights are non-finite by the third SGD step
    (docs/speed.md). `solver="fixed16"` is the nearest TorchDeq configuration that trains: its
    `simple_fixed_point_iter` for 16 steps (the essay-faithful model's length; the stat-keeping
    `fixed_point_iter` would return its lowest-residual iterate instead of the 16th) with the same
    1-step phantom gradient.

    Both run with deqnca's one-line fix of TorchDeq's best-iterate selection
    (`deqnca.core.solvers.patch_torchdeq_masking`); unpatched, Broyden returns NaN for most samples at
    initialisation (12 of 16 in `broyden_eq2.py`), and a NaN loss skips the backward pass, so the
    baseline would be timed on forward passes only.
    """

    SOLVERS = {"broyden": dict(f_solver="broyden", f_max_iter=40),
               "fixed16": dict(f_solver="simple_fixed_point_iter", f_max_iter=16)}

    def __init__(self, solver="broyden"):
        super().__init__()
        from torchdeq import get_deq

        from deqnca.core.solvers import patch_torchdeq_masking

        patch_torchdeq_masking()
        self.K1 = nn.Conv2d(1, 16, 3, padding=1)
        self.K2 = nn.Conv2d(48, 32, 3, padding=1)
        self.fc1, self.fc2 = nn.Linear(32, 32), nn.Linear(32, 10)
        self.deq = get_deq(**self.SOLVERS[solver])
        self.nstep = 0

    def forward(self, x):
        u = torch.relu(self.K1(x))
        f = lambda z: z + torch.tanh(self.K2(torch.cat([u, z], 1)))
        z0 = torch.randn(x.shape[0], 32, *x.shape[2:], device=x.device)
        zs, info = self.deq(f, z0)
        self.nstep = float(info["nstep"].float().mean())
        return self.fc2(torch.relu(self.fc1(zs[-1].mean((2, 3)))))


def baseline_solvers(ap, text: str) -> list[str]:
    """--baselines "a,b" → the PlainTorchDEQ solvers, or a usage error naming the valid ones."""
    solvers = text.split(",")
    for solver in solvers:
        if solver not in PlainTorchDEQ.SOLVERS:
            ap.error(f"unknown baseline {solver!r}; choose from {', '.join(PlainTorchDEQ.SOLVERS)}")
    return solvers


def _sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def preset_variant(name: str) -> tuple[str, bool, str]:
    """"essay+graph", "essay+bf16" → (preset, CUDA graph?, amp mode)."""
    graphed, amp = False, "off"
    while "+" in name:
        name, suffix = name.rsplit("+", 1)
        if suffix == "graph":
            graphed = True
        elif suffix == "bf16":
            amp = "bf16"
        else:
            raise ValueError(f"unknown preset suffix +{suffix}; use +graph or +bf16")
    return name, graphed, amp


def timed_step(model, opt, xb, yb, device, update=True, amp="off") -> tuple[float, bool]:
    """One SGD step, timed; a non-finite loss skips backward and the update. (seconds, finite)
    update=False does the forward and backward passes but leaves the weights alone."""
    _sync(device)
    t = time.perf_counter()
    with amp_context(amp, device):
        loss = F.cross_entropy(model(xb).float(), yb)
    opt.zero_grad()
    finite = bool(torch.isfinite(loss))
    if finite:
        loss.backward()
        if update:
            opt.step()
    _sync(device)
    return time.perf_counter() - t, finite


def time_training(model, x, y, device, batches, batch_size=64, channels_last=False, cuda_graph=False,
                  update=True, amp="off"):
    opt = torch.optim.SGD(model.parameters(), lr=0.005, momentum=0.9)
    if cuda_graph:
        return time_captured_training(model, opt, x, y, device, batches, batch_size)
    n_total = math.ceil(len(x) / batch_size)
    n = n_total if batches == 0 else batches
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    times, fsteps, bsteps = [], [], []
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    warm = 3
    for b in range(n + warm):
        idx = perm[(b % n_total) * batch_size:((b % n_total) + 1) * batch_size]
        xb, yb = x[idx].to(device), y[idx].to(device)
        if channels_last:
            xb = as_layout(xb, "on", "cpu")   # one-channel images: the channels-last strides
        seconds, _ = timed_step(model, opt, xb, yb, device, update=update, amp=amp)
        if b >= warm:
            times.append(seconds)
            stats = getattr(model, "last_stats", None)
            fsteps.append(stats.nstep if stats is not None else model.nstep)
            back = getattr(getattr(model, "gradient", None), "last_backward", None)
            bsteps.append(back.nstep if back is not None else float("nan"))
    per_batch = sum(times) / len(times)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else float("nan")
    return {"epoch_s": per_batch * n_total, "train_samples_per_s": batch_size / per_batch,
            "fwd_steps": sum(fsteps) / len(fsteps), "bwd_steps": sum(bsteps) / len(bsteps),
            "peak_mib": peak, "timed_batches": n}


def time_captured_training(model, opt, x, y, device, batches, batch_size=64):
    """The trainer's CUDA-graph path (deqnca.engine.graphs): copy the batch and the noise in, replay,
    read the finiteness flag — the same host work per step as `deqnca train`."""
    from deqnca.engine.graphs import CapturedStep

    n_total = math.ceil(len(x) / batch_size)
    n = n_total - 1 if batches == 0 else batches     # the ragged last batch runs eagerly in training
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    gen = torch.Generator(device=device).manual_seed(0)
    torch.cuda.reset_peak_memory_stats()
    step = CapturedStep(model, opt, x[:batch_size].to(device))
    x, y = x.to(device), y.to(device)
    for b in range(3):                               # warm-up replays
        idx = perm[b * batch_size:(b + 1) * batch_size].to(device)
        step(x[idx], y[idx], model.initial_state(x[idx], gen))
    _sync(device)
    t = time.perf_counter()
    for b in range(n):
        idx = perm[b * batch_size:(b + 1) * batch_size].to(device)
        step(x[idx], y[idx], model.initial_state(x[idx], gen))
        bool(step.finite)
    _sync(device)
    per_batch = (time.perf_counter() - t) / n
    return {"epoch_s": per_batch * n_total, "train_samples_per_s": batch_size / per_batch,
            "fwd_steps": float(step.stats.nstep), "bwd_steps": float("nan"),
            "peak_mib": torch.cuda.max_memory_allocated() / 2**20, "timed_batches": n}


def full_training(name, device, seed=0, out=None, **train_over):
    """A complete `deqnca train` run of a preset: summed epoch times and the final test accuracy.
    With `out` the run folder (checkpoint, metrics.jsonl) is kept there."""
    import tempfile

    from deqnca.tasks.mnist.task import train

    cfg = preset(name, None, **{"seed": seed, **train_over})
    data = (*load_mnist(split="train"), *load_mnist(split="test"))
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = f"{out}/{name}-s{seed}" if out else tmp
        r = train(cfg.model, cfg, run_dir, data, device=device,
                  log=lambda *_: None)
    h = r["history"]
    return {"train_time_s": sum(e["epoch_time_s"] for e in h), "wall_s": h[-1]["elapsed_s"],
            "epochs": len(h), "test_acc": h[-1]["test_acc"], "test_rel_median": h[-1]["test_rel_median"],
            "test_frac_below_1e-3": h[-1]["test_frac_below_1e-3"],
            "per_epoch_test_acc": [e["test_acc"] for e in h]}


@torch.no_grad()
def time_inference(model, x, device, batch_size=500, channels_last=False, limit=0):
    model.eval()
    x = x[:limit] if limit else x
    _sync(device)
    t = time.perf_counter()
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].to(device)
        if channels_last:
            xb = as_layout(xb, "on", "cpu")   # one-channel images: the channels-last strides
        model(xb)
    _sync(device)
    model.train()
    return {"infer_samples_per_s": len(x) / (time.perf_counter() - t)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batches", type=int, default=30, help="timed training batches (0 = one full epoch)")
    ap.add_argument("--infer-limit", type=int, default=2000, help="test images timed for inference (0 = all)")
    ap.add_argument("--baselines", default="broyden",
                    help="PlainTorchDEQ solvers timed first, comma-separated (broyden = the essay's settings, "
                         "fixed16 = 16 plain fixed-point steps); speed-ups are against the first")
    ap.add_argument("--presets", default="essay,essay-broyden,equilibrium")
    ap.add_argument("--train-full", default="",
                    help="presets to train for their full schedule (seed 0), timed in this run")
    ap.add_argument("--train-out", help="keep the --train-full run folders under this folder")
    ap.add_argument("--json-out")
    args = ap.parse_args(argv)
    try:
        variants = [preset_variant(name) for name in args.presets.split(",")]
    except ValueError as e:
        ap.error(f"--presets {args.presets}: {e}")
    for name, (base_name, graphed, amp) in zip(args.presets.split(","), variants):
        if graphed:       # refused before anything is timed, on any device
            from deqnca.engine.graphs import step_unsupported_reason
            from deqnca.tasks.mnist.task import MnistConfig as TrainConfig

            why_not = step_unsupported_reason(EquilibriumModel(preset(base_name).model),
                                              TrainConfig(amp=amp))   # timed with SGD at a constant rate
            if why_not:
                ap.error(f"--presets {name}: {why_not}")
    torch.manual_seed(0)
    x, y = load_mnist(split="train")
    xt, _ = load_mnist(split="test")
    rows = {}
    for solver in baseline_solvers(ap, args.baselines):
        torch.manual_seed(0)
        base = PlainTorchDEQ(solver).to(args.device)
        label = "plain TorchDeq (essay defaults)" if solver == "broyden" else f"plain TorchDeq {solver}"
        # the essay's Broyden recipe makes its weights non-finite by the third SGD step (docs/speed.md),
        # after which its steps do NaN arithmetic of no meaning; so it is timed at its initial weights:
        # every timed step is a complete forward solve and backward pass, without the update
        rows[label] = {**time_training(base, x, y, args.device, args.batches, update=solver != "broyden"),
                       **time_inference(base, xt, args.device, limit=args.infer_limit)}
    cl = args.device == "cpu"
    for name, graphed, amp in variants:
        if graphed and not args.device.startswith("cuda"):
            continue
        torch.manual_seed(0)
        model = EquilibriumModel(preset(name).model).to(args.device)
        label = f"deqnca {name}" + (" (CUDA graph)" if graphed else "") + (" (bf16 autocast)" if amp != "off" else "")
        rows[label] = {**time_training(model, x, y, args.device, args.batches, channels_last=cl,
                                       cuda_graph=graphed, amp=amp),
                       **time_inference(model, xt, args.device, channels_last=cl, limit=args.infer_limit)}
    ref = next(iter(rows.values()))
    machine = torch.cuda.get_device_name() if args.device.startswith("cuda") else \
        f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    print(f"# {machine}, torch {torch.__version__}, {date.today()}, "
          f"`python benchmarks/mnist_speed.py {' '.join(sys.argv[1:])}`")
    print("| configuration | epoch (s) | speed-up | train img/s | infer img/s | fwd steps | bwd steps | peak MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        r["speedup_vs_plain"] = ref["epoch_s"] / r["epoch_s"]
        print(f"| {name} | {r['epoch_s']:.1f} | {r['speedup_vs_plain']:.2f}x | {r['train_samples_per_s']:.0f} | "
              f"{r['infer_samples_per_s']:.0f} | {r['fwd_steps']:.1f} | {r['bwd_steps']:.1f} | {r['peak_mib']:.0f} |")
    full = {}

    def write_json():
        if args.json_out:
            with open(args.json_out, "w") as fh:
                json.dump({"machine": machine, "torch": torch.__version__, "date": str(date.today()),
                           "args": vars(args), "rows": rows, "full_training": full}, fh, indent=1)

    write_json()
    for name in filter(None, (args.train_full or "").split(",")):
        full[name] = r = full_training(name, args.device, out=args.train_out)
        per_epoch = r["train_time_s"] / r["epochs"]
        r["per_epoch_speedup_vs_plain"] = ref["epoch_s"] / per_epoch
        print(f"full training `deqnca train --preset {name} --seed 0`: {r['epochs']} epochs, "
              f"{r['train_time_s']:.1f} s of training ({per_epoch:.2f} s/epoch, "
              f"{r['per_epoch_speedup_vs_plain']:.1f}x faster per epoch than plain TorchDeq above), "
              f"{r['wall_s']:.1f} s with evaluation, test accuracy {r['test_acc']:.4f}")
        write_json()


if __name__ == "__main__":
    main()
