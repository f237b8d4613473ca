"""The `deqnca` command: train, eval, info, demo.

Exit codes: 0 success, 1 bad input (missing/corrupt data or checkpoint, non-finite run),
2 usage error, 130 interrupted (a usable checkpoint is left behind).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

EXIT_BAD_INPUT, EXIT_INTERRUPTED = 1, 130


def repo_root() -> Path | None:
    for parent in Path(__file__).resolve().parents:
        if (parent / "models").is_dir() and (parent / "datasets").is_dir():
            return parent
    return None


def shipped_model(name: str) -> Path:
    root = repo_root()
    if root is None:
        raise FileNotFoundError("shipped models not found (run from a clone of the repository)")
    return root / "models" / f"mnist-{name}"


def shipped_models() -> list[Path]:
    root = repo_root()
    if root is None:
        raise FileNotFoundError("shipped models not found (run from a clone of the repository)")
    # the essay's model first, then the others by name
    return sorted((p.with_suffix("") for p in (root / "models").glob("*.safetensors")),
                  key=lambda p: (p.name != "mnist-essay", p.name))


def _device(arg: str) -> str:
    import torch

    if arg == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if arg.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {arg}: CUDA is not available on this machine; use --device cpu")
    return arg


def _threads(device: str):
    import torch

    if device == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, os.cpu_count() or 1))
    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True


def _load_data(args, splits=("train", "test")):
    from .data.idx import load_mnist

    verify = False if getattr(args, "no_verify", False) else None
    return [load_mnist(args.data_dir, split=s, verify_md5=verify) for s in splits]


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _overrides(pairs):
    out: dict = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ValueError(f"--set {pair!r}: expected key=value, e.g. --set solver_kw.max_iter=30")
        key, value = pair.split("=", 1)
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = _parse_value(value)
    return out


def cmd_train(args) -> int:
    from .experiments.mnist import preset
    from .train.loop import TrainConfig, train

    device = _device(args.device)
    _threads(device)
    train_over = {k: v for k, v in {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                                    "seed": args.seed, "train_subset": args.train_subset,
                                    "test_subset": args.test_subset, "cuda_graph": args.cuda_graph,
                                    "amp": args.amp}.items()
                   if v is not None}
    p = preset(args.preset, _overrides(args.set), train_over)
    cfg = TrainConfig.from_dict(p["train"])
    (x, y), (xt, yt) = _load_data(args)
    out = Path(args.out or f"runs/{args.preset}-seed{cfg.seed}")
    result = train(p["model"], cfg, out, (x, y, xt, yt), device=device, resume=args.resume,
                   log=lambda s: print(s, file=sys.stderr))
    from .train import distributed

    if int(os.environ.get("RANK", "0")) != 0:
        return distributed.finish(0)
    last = result["history"][-1] if result["history"] else {}
    summary = {"out": str(out), "parameters": result["parameters"], **last}
    print(json.dumps(summary) if args.json else
          f"done: {out}  parameters {result['parameters']}  test accuracy {last.get('test_acc', float('nan')):.4f}")
    return distributed.finish(0)                    # under torchrun: ends the process here


def evaluate_checkpoint(path, data_dir=None, device="cpu", seed=0, limit=0, solver_kw=None, no_verify=False,
                        progress=True, amp="off"):
    from .data.idx import load_mnist
    from .model import count_parameters
    from .train.checkpoint import load_model
    from .train.loop import evaluate, residual_summary

    model, meta = load_model(path, device)
    x, y = load_mnist(data_dir, split="test", verify_md5=False if no_verify else None)
    if limit:
        x, y = x[:limit], y[:limit]
    t = time.time()
    # small batches are ~2x faster on CPU (cache-resident states); large ones fill a GPU
    batch = 50 if str(device).startswith("cpu") else 500
    ev = evaluate(model, x, y, batch_size=batch, seed=seed, progress=progress, amp=amp, **(solver_kw or {}))
    res = residual_summary(ev["rel_residual"])
    return {
        "checkpoint": str(path), "parameters": count_parameters(model), "accuracy": ev["accuracy"],
        "n": ev["n"], "solver": model.solver_name, **{k: v for k, v in model.solver_kw.items()},
        **(solver_kw or {}), "amp": amp, "nstep_mean": ev["nstep_mean"], "fallback": ev["fallback"], **res,
        "seconds": time.time() - t, "documented_accuracy": meta.get("metrics", {}).get("test_acc"),
        "status": meta.get("status", ""),
    }


def _print_eval(r, as_json):
    if r.get("status"):
        r = {**r, "checkpoint": f"{r['checkpoint']}  [{r['status']}]"}
    if as_json:
        print(json.dumps(r))
        return
    print(f"{r['checkpoint']}\n  test accuracy {100 * r['accuracy']:.2f}% on {r['n']} images"
          f"   parameters {r['parameters']}\n"
          f"  solver {r['solver']} (max_iter {r.get('max_iter')}, tol {r.get('tol')}): "
          f"mean steps {r['nstep_mean']:.1f}, fallbacks {r['fallback']}\n"
          f"  relative residual ‖f(z)−z‖/‖f(z)‖: median {r['rel_median']:.2e}  p90 {r['rel_p90']:.2e}  "
          f"p99 {r['rel_p99']:.2e}  max {r['rel_max']:.2e}  ≤1e-3 on {100 * r['frac_below_1e-3']:.1f}%"
          f"   ({r['seconds']:.0f} s)")


def cmd_eval(args) -> int:
    device = _device(args.device)
    _threads(device)
    solver_kw = {k: v for k, v in {"max_iter": args.max_iter, "tol": args.tol}.items() if v is not None}
    if args.solver:
        solver_kw["solver"] = args.solver
    paths = args.checkpoint or shipped_models()
    args.eval_rows = []
    for path in paths:
        r = evaluate_checkpoint(path, args.data_dir, device, args.seed, args.limit, solver_kw, args.no_verify,
                                progress=not args.json, amp=args.amp)
        _print_eval(r, args.json)
        args.eval_rows.append(r)
    return 0


def cmd_info(args) -> int:
    from .train.checkpoint import read_checkpoint

    _, meta = read_checkpoint(args.checkpoint)
    meta.pop("optimizer", None)
    print(json.dumps(meta, indent=1))
    return 0


def cmd_export(args) -> int:
    """Strip a run's checkpoint to a shippable model: weights only, plus config, metrics, provenance."""
    from .maze.model import load_maze_model
    from .grow.train import CHECKPOINT_KIND as GROW_KIND, load_grow_checkpoint
    from .train.checkpoint import load_model, read_checkpoint, save_checkpoint

    provenance = {"source": str(args.checkpoint), "machine": args.machine, "date": args.date,
                  "command": args.command}
    _, meta = read_checkpoint(args.checkpoint)
    if meta.get("kind") == GROW_KIND or "maze" in meta:
        # growing NCA and maze checkpoints: keep their own records (their loaders read them), drop the optimizer
        model, _ = (load_grow_checkpoint if meta.get("kind") == GROW_KIND else load_maze_model)(args.checkpoint)
        info = {k: v for k, v in meta.items()
                if k not in ("optimizer", "weights_sha256", "weights_file", "model_config")}
        info["provenance"] = provenance
    else:
        model, meta = load_model(args.checkpoint)
        history = meta.get("history", [])
        info = {"metrics": history[-1] if history else {}, "history": history,
                "train_config": meta.get("train_config"), "parameters": meta.get("parameters"),
                "provenance": provenance}
    save_checkpoint(args.dest, model, None, info)
    print(f"exported {args.checkpoint} -> {args.dest}.safetensors / .json")
    return 0


def cmd_rollout(args) -> int:
    """Figure 1 for one test image: frames, GIF, residual/probability curves, and a JSON trace."""
    from .data.idx import load_mnist
    from .experiments.nca_view import draw_figure1
    from .train.checkpoint import load_model

    device = _device(args.device)
    path = Path(args.checkpoint) if args.checkpoint else shipped_model("essay")
    model, _ = load_model(path, device)
    x, y = load_mnist(args.data_dir, split="test", verify_md5=False if args.no_verify else None)
    if not 0 <= args.index < len(x):
        raise ValueError(f"--index {args.index}: the test set has images 0..{len(x) - 1}")
    label, out = int(y[args.index]), Path(args.out)
    stem = f"{path.name}-{args.index}"
    r, files = draw_figure1(model, x[args.index:args.index + 1].to(device), label, out, stem,
                            f"{path.name}: test image {args.index} (label {label})", steps=args.steps,
                            seed=args.seed)
    trace = {"checkpoint": str(path), "index": args.index, "label": label, "steps": args.steps,
             "rel_residual": r.rel_residual[0].tolist(),
             "prediction": r.probs[0].argmax(-1).tolist(),
             "p_label": r.probs[0, :, label].tolist(), "files": [str(f) for f in files]}
    (out / f"{stem}.json").write_text(json.dumps(trace))
    if args.json:
        print(json.dumps(trace))
    else:
        print(f"label {label}; prediction after {args.steps} steps: {trace['prediction'][-1]} "
              f"(p={r.probs[0, -1].max():.3f}); final relative residual {trace['rel_residual'][-1]:.2e}")
        for f in files:
            print(f"  {f}")
    return 0


def cmd_demo(args) -> int:
    """The README's main job: the essay's result from the shipped models, then the NCA view."""
    from .experiments import report

    args.checkpoint = None
    args.solver = args.max_iter = args.tol = None
    args.limit, args.amp = (500 if args.quick else 0), "off"     # the documented float32 numbers
    rc = cmd_eval(args)
    return rc or report.main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deqnca", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version="deqnca 0.1.0")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p):
        p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
        p.add_argument("--seed", type=int, default=None if p.prog.endswith("train") else 0,
                       help="random seed (state noise, batch order, initialisation)")
        p.add_argument("--data-dir", default=None,
                       help="folder with the four MNIST-layout IDX files (default: the vendored datasets/mnist)")
        p.add_argument("--no-verify", action="store_true",
                       help="skip the MNIST MD5 check (for Fashion-MNIST, KMNIST, ...)")
        p.add_argument("--json", action="store_true", help="print machine-readable JSON")

    p = sub.add_parser("train", help="train a model from a preset", description="Train a model from a preset.")
    common(p)
    from .experiments.mnist import PRESETS

    p.add_argument("--preset", choices=sorted(PRESETS), default="essay",
                   help="essay or equilibrium; the others are variants measured in docs/mnist.md and docs/speed.md")
    p.add_argument("--out", help="run folder (default runs/<preset>-seed<seed>)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--train-subset", type=int, help="use only the first N training images")
    p.add_argument("--test-subset", type=int, help="evaluate on the first N test images each epoch")
    p.add_argument("--cuda-graph", choices=["auto", "on", "off"],
                   help="capture the training step as one CUDA graph (auto: on a GPU when the model allows; "
                        "see deqnca.train.graphs)")
    p.add_argument("--amp", choices=["off", "bf16"],
                   help="bf16: convolutions in bfloat16 under autocast, state in float32 (1.6x per epoch on "
                        "CPUs with AMX; not measured on CPUs without bfloat16 units; docs/speed.md); default off")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a model config entry, e.g. --set solver_kw.max_iter=30 (repeatable)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate checkpoints on the test set",
                       description="Evaluate checkpoints (default: both shipped models) on the MNIST test set.")
    common(p)
    p.add_argument("checkpoint", nargs="*", help="checkpoint path(s) without suffix (default: shipped models)")
    p.add_argument("--solver", choices=["rollout", "fixed_point", "anderson", "broyden"])
    p.add_argument("--max-iter", type=int)
    p.add_argument("--tol", type=float)
    p.add_argument("--limit", type=int, default=0, help="only the first N test images")
    p.add_argument("--amp", choices=["off", "bf16"], default="off",
                   help="bf16: solve under bfloat16 autocast (convolutions in bfloat16, state in float32)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("info", help="print a checkpoint's config and metrics")
    p.add_argument("checkpoint")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("export", help="turn a run checkpoint (MNIST, grow or maze) into a shippable model "
                       "(weights + JSON, no optimizer)")
    p.add_argument("checkpoint")
    p.add_argument("dest")
    p.add_argument("--machine", default="unknown", help="where it was trained, for the provenance record")
    p.add_argument("--date", default=time.strftime("%Y-%m-%d"))
    p.add_argument("--command", default="", help="the command that trained it")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("rollout", help="replay a model's rule on one test image: frames, GIF, curves",
                       description="Figure 1: the rule iterated from noise as a cellular automaton.")
    common(p)
    p.add_argument("checkpoint", nargs="?", help="checkpoint (default: models/mnist-essay)")
    p.add_argument("--index", type=int, default=7, help="test image index")
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--out", default="out/rollout")
    p.set_defaults(func=cmd_rollout)

    p = sub.add_parser("demo", help="the README main job: evaluate shipped models, draw the NCA view, write the report")
    common(p)
    p.add_argument("--out", default="out/demo", help="folder for figures and the HTML report")
    p.add_argument("--quick", action="store_true", help="smaller samples (for tests)")
    p.set_defaults(func=cmd_demo)
    from .experiments import grow, maze     # their own sub-commands: deqnca grow ..., deqnca maze ...

    grow.add_cli(sub)
    maze.add_cli(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .data.idx import DataError
    from .train.checkpoint import CheckpointError

    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (DataError, CheckpointError, FileNotFoundError, ValueError, FloatingPointError) as e:
        print(f"deqnca: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
