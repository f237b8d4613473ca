"""Plain TorchDeq against deqnca's fast path, trained for the same epochs in ONE interleaved run.

The issue-6 CPU question is "faster per epoch at equal accuracy after the same number of epochs,
measured in the same run". On a shared or busy machine two trainings run one after the other see
different loads, so this script alternates them batch by batch: both models see the same batches in
the same order, each step is timed on its own, and any background load falls on both alike. After
every epoch both are evaluated on the same test images.

    python benchmarks/epochs_race.py --device cpu --epochs 1 --presets essay --eval-limit 2000 \
        --json-out docs/results/epochs_race_cpu.json

The baselines are `mnist_speed.PlainTorchDEQ` (NCHW, PyTorch's initialisation, TorchDeq's 1-step
phantom gradient): `broyden` is the essay's setting (TorchDeq's Broyden, 40 iterations, tol 1e-3),
which diverges and cannot train; `fixed16` is the nearest TorchDeq configuration that trains (16 plain
fixed-point steps). Speed-ups are against the first baseline listed. The presets train as in
`mnist_speed.time_training` (SGD 0.005/0.9, batch 64, channels-last on the CPU); "essay+bf16" trains
the preset under bfloat16 autocast (evaluation stays float32). Progress and an ETA on stderr (tqdm).

    python benchmarks/epochs_race.py --device cpu --epochs 2 --baselines fixed16 --presets essay \
        --eval-limit 0 --json-out docs/results/epochs_race_cpu_fixed16.json
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
from datetime import date
from pathlib import Path

import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from deqnca.data.idx import load_mnist  # noqa: E402
from deqnca.tasks.mnist.config import preset  # noqa: E402
from deqnca.tasks.mnist.evaluate import as_layout  # noqa: E402
from deqnca.tasks.mnist.model import EquilibriumModel  # noqa: E402
from mnist_speed import PlainTorchDEQ, baseline_solvers, preset_variant, timed_step  # noqa: E402


@torch.no_grad()
def accuracy(model, x, y, device, channels_last, batch_size=500) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].to(device)
        if channels_last:
            xb = as_layout(xb, "on", "cpu")   # one-channel images: the channels-last strides
        correct += int((model(xb).argmax(1).cpu() == y[i:i + batch_size]).sum())
    model.train()
    return correct / len(x)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--baselines", default="broyden",
                    help=f"comma-separated PlainTorchDEQ solvers: {','.join(PlainTorchDEQ.SOLVERS)}")
    ap.add_argument("--presets", default="essay")
    ap.add_argument("--eval-limit", type=int, default=2000, help="test images scored after each epoch (0 = all)")
    ap.add_argument("--train-limit", type=int, default=0, help="training images per epoch (0 = all 60,000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json-out")
    args = ap.parse_args(argv)
    x, y = load_mnist(split="train")
    if args.train_limit:
        x, y = x[:args.train_limit], y[:args.train_limit]
    xt, yt = load_mnist(split="test")
    if args.eval_limit:
        xt, yt = xt[:args.eval_limit], yt[:args.eval_limit]
    cl = args.device == "cpu"
    runs = {}
    for solver in baseline_solvers(ap, args.baselines):
        torch.manual_seed(args.seed)
        runs[f"plain TorchDeq {solver}"] = {"model": PlainTorchDEQ(solver).to(args.device), "channels_last": False}
    for variant in args.presets.split(","):
        try:
            name, graphed, amp = preset_variant(variant)
        except ValueError as e:
            ap.error(f"--presets {variant}: {e}")
        if graphed:
            ap.error(f"--presets {variant}: the race times eager steps; use mnist_speed.py for +graph")
        torch.manual_seed(args.seed)
        runs[f"deqnca {variant}"] = {"model": EquilibriumModel(preset(name).model).to(args.device),
                                     "channels_last": cl, "amp": amp}
    for r in runs.values():
        r.setdefault("amp", "off")
        r.update(opt=torch.optim.SGD(r["model"].parameters(), lr=0.005, momentum=0.9), seconds=[], acc=[],
                 skipped=0, first_nonfinite_step=None)
    batch_size, n = 64, math.ceil(len(x) / 64)
    machine = torch.cuda.get_device_name() if args.device.startswith("cuda") else \
        f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    record = {"machine": machine, "torch": torch.__version__, "date": str(date.today()), "args": vars(args)}

    def write_json():
        if args.json_out:
            rows = {k: {"epoch_s": r["seconds"], "test_acc": r["acc"], "skipped_steps": r["skipped"],
                         "first_nonfinite_step": r["first_nonfinite_step"]}
                    for k, r in runs.items()}
            Path(args.json_out).write_text(json.dumps({**record, "eval_images": len(xt), "rows": rows}, indent=1))

    for epoch in range(args.epochs):
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(args.seed * 1000 + epoch))
        spent = {k: 0.0 for k in runs}
        for b in tqdm(range(n), desc=f"epoch {epoch + 1}/{args.epochs}", dynamic_ncols=True, mininterval=5):
            idx = perm[b * batch_size:(b + 1) * batch_size]
            for key, r in runs.items():          # the same batch for every model, one step each in turn
                xb, yb = x[idx].to(args.device), y[idx].to(args.device)
                if r["channels_last"]:
                    xb = as_layout(xb, "on", "cpu")   # one-channel images: the channels-last strides
                seconds, finite = timed_step(r["model"], r["opt"], xb, yb, args.device, amp=r["amp"])
                spent[key] += seconds
                r["skipped"] += not finite
                if not finite and r["first_nonfinite_step"] is None:
                    r["first_nonfinite_step"] = epoch * n + b + 1
        for key, r in runs.items():
            r["seconds"].append(spent[key])
            r["acc"].append(accuracy(r["model"], xt, yt, args.device, r["channels_last"]))
        write_json()
    base = next(iter(runs.values()))
    print(f"# {machine}, torch {torch.__version__}, {date.today()}, "
          f"`python benchmarks/epochs_race.py {' '.join(sys.argv[1:] if argv is None else argv)}`")
    print(f"| configuration | training s per epoch | speed-up | test accuracy after {args.epochs} epoch(s), "
          f"{len(xt)} images | non-finite steps skipped |")
    print("|---|---|---|---|---|")
    for key, r in runs.items():
        per_epoch = sum(r["seconds"]) / len(r["seconds"])
        speedup = (sum(base["seconds"]) / len(base["seconds"])) / per_epoch
        print(f"| {key} | {per_epoch:.1f} | {speedup:.2f}x | {100 * r['acc'][-1]:.2f}% | {r['skipped']} |")
    write_json()


if __name__ == "__main__":
    main()
