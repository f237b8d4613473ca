"""The MNIST commands: train, eval, info, export, rollout, demo."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from deqnca.core.configs import ConfigError
from deqnca.core.fileio import strict_json, write_text_atomic
from deqnca.core.resources import shipped_model, shipped_models
from deqnca.engine.commandline import (
    MAX_STEPS,
    add_run_flags,
    build_config,
    check_model_buildable,
    finish_training,
    nonneg_float,
    nonneg_int,
    options_from_args,
    seed_int,
    setup_device,
    steps_int,
    writable_folder,
)


def _training_data(args, out: Path):
    """((x, y, x_test, y_test), record) of `--data-dir`; on `--resume` without it, of the data the run recorded
    (the engine refuses other data)."""
    from deqnca.data.provenance import idx_data, recorded_folder
    from deqnca.engine.commandline import recorded_run

    data_dir = args.data_dir
    if args.resume and data_dir is None:
        recorded = recorded_run(out).get("data")
        if recorded:
            data_dir = recorded_folder(recorded, f"--resume: the run in {out}")
    return idx_data(data_dir, verify_md5=False if args.no_verify else None)


def cmd_train(args) -> int:
    from deqnca.engine.trainer import fit
    from deqnca.tasks.mnist.config import PRESETS, MnistConfig, preset
    from deqnca.tasks.mnist.model import EquilibriumModel, ModelConfig
    from deqnca.tasks.mnist.task import MnistTask

    base = PRESETS.build(args.preset)           # an unknown name: a one-line error that lists the presets
    device = setup_device(args.device)
    train, model_over, given = options_from_args(args, MnistConfig, base, ModelConfig)
    cfg = build_config(MnistConfig, train, preset(args.preset, model_over).model)
    check_model_buildable(lambda: EquilibriumModel(cfg.model))     # an unknown solver or rule setting: exit 2
    out = writable_folder(args.out or f"runs/{args.preset}-seed{cfg.seed}")
    data, record = _training_data(args, out)
    if device == "cpu" and not cfg.train_subset and not args.resume and not args.json:
        print(f"training on all {len(data[0]):,} images on the CPU (an epoch takes minutes): --train-subset 2000 "
              "--test-subset 500 for a first look", file=sys.stderr)
    result = fit(MnistTask(cfg, data, record), out, device=device, resume=args.resume, overwrite=args.overwrite,
                 changed=given, log=lambda s: print(s, file=sys.stderr), progress=not args.json)
    return finish_training(args, out, result, "done: {out}  parameters {parameters}  test accuracy {test_acc:.4f}")


ETA_FROM = 2000        # more test images than this per model: `deqnca eval` says how long it will take


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def _estimate(model, x, y, batch, seed, amp, solver_kw, name, log) -> None:
    """Time one batch, then say how long all of `x` will take and how to ask for less (`log`: stderr)."""
    from deqnca.tasks.mnist.evaluate import evaluate

    evaluate(model, x[:2], y[:2], batch_size=2, seed=seed, amp=amp, **solver_kw)       # warm-up
    t = time.time()
    evaluate(model, x[:batch], y[:batch], batch_size=batch, seed=seed, amp=amp, **solver_kw)
    total = (time.time() - t) * len(x) / batch
    log(f"{name}: {len(x):,} test images, about {_duration(total)} on this machine (timed on {batch}); for a "
        f"quicker look: --sample 1000 (evenly spaced, with a 95% interval) or --limit 500 (the first 500)")


def evaluate_checkpoint(path, data_dir=None, device="cpu", seed=0, limit=0, solver_kw=None, no_verify=False,
                        progress=True, amp="off", sample=0, allow_other_data=False, estimate=None):
    from deqnca.data.provenance import recorded_test_split
    from deqnca.tasks import load
    from deqnca.tasks.mnist.evaluate import evaluate, residual_summary
    from deqnca.tasks.mnist.model import count_parameters

    model, meta = load(path, device, kind="mnist")
    amp_reason = "set explicitly"
    if amp == "auto":
        from deqnca.engine.hardware import choose_cpu_path

        # tolerance-solved models need more steps under bfloat16 rounding (docs/speed.md): float32 for them
        choice = choose_cpu_path(device, allow_bf16=model.solver_name == "rollout")
        amp, amp_reason = choice["amp"], choice["reason"]
    x, y, data, note = recorded_test_split(meta.get("data"), str(path), data_dir, False if no_verify else None,
                                           allow_other_data)
    if note:
        print(f"deqnca: note: {note}", file=sys.stderr)
    total = len(x)
    if limit:
        x, y = x[:limit], y[:limit]
    elif sample and sample < len(x):
        # evenly spaced through the test set: the first images are easier than the rest
        import torch

        idx = torch.linspace(0, len(x) - 1, sample).round().long()
        x, y = x[idx], y[idx]
    # small batches are ~2x faster on CPU (cache-resident states); large ones fill a GPU
    batch = 50 if str(device).startswith("cpu") else 500
    if estimate is not None and len(x) > ETA_FROM:
        _estimate(model, x, y, batch, seed, amp, solver_kw or {}, Path(str(path)).name, estimate)
    t = time.time()
    ev = evaluate(model, x, y, batch_size=batch, seed=seed, progress=progress, amp=amp, **(solver_kw or {}))
    res = residual_summary(ev["rel_residual"])
    from deqnca.tasks.mnist.evaluate import wilson_interval

    low, high = wilson_interval(round(ev["accuracy"] * ev["n"]), ev["n"])
    return {
        "checkpoint": str(path), "data": data, "trained_on": (meta.get("data") or {}).get("name"),
        "parameters": count_parameters(model), "accuracy": ev["accuracy"],
        "accuracy_ci95": [low, high], "n": ev["n"], "of": total,
        "subset": "first" if limit else ("evenly spaced" if ev["n"] < total else "all"),
        "solver": model.solver_name, **{k: v for k, v in model.solver_kw.items()},
        **(solver_kw or {}), "amp": amp, "amp_reason": amp_reason, "nstep_mean": ev["nstep_mean"],
        "fallback": ev["fallback"], **res,
        "seconds": time.time() - t, "documented_accuracy": meta.get("metrics", {}).get("test_acc"),
        "status": meta.get("status", ""),
    }


def _print_eval(r, as_json):
    from deqnca.reports.report import display_name  # a shipped model by its name, not its install path

    name = display_name(r["checkpoint"])
    if r.get("status"):
        r = {**r, "checkpoint": f"{r['checkpoint']}  [{r['status']}]"}
        name = f"{name}  [{r['status']}]"
    if as_json:
        print(strict_json(r))
        return
    r = {**r, "checkpoint": name}
    if r["n"] < r["of"]:
        low, high = r["accuracy_ci95"]
        on = (f"on {r['n']} of {r['of']} images ({r['subset']}; 95% interval {100 * low:.2f}–{100 * high:.2f}%; "
              "all: --sample 0)")
    else:
        on = f"on {r['n']} images"
    if "mnist" != r.get("data", "mnist") or r.get("trained_on") not in (None, "mnist"):
        on += f" of {r['data']}"
    print(f"{r['checkpoint']}\n  test accuracy {100 * r['accuracy']:.2f}% {on}"
          f"   parameters {r['parameters']}\n"
          f"  solver {r['solver']} (max_iter {r.get('max_iter')}, tol {r.get('tol')}): "
          f"mean steps {r['nstep_mean']:.1f}, fallbacks {r['fallback']}\n"
          f"  relative residual ‖f(z)−z‖/‖f(z)‖: median {r['rel_median']:.2e}  p90 {r['rel_p90']:.2e}  "
          f"p99 {r['rel_p99']:.2e}  max {r['rel_max']:.2e}  ≤1e-3 on {100 * r['frac_below_1e-3']:.1f}%"
          f"   ({r['seconds']:.0f} s)")


def cmd_eval(args) -> int:
    from deqnca.cli.tasks import evaluate_with_task, print_task_eval, recorded_kind

    device = setup_device(args.device, measure_threads=True, verbose=getattr(args, "verbose", False))
    solver_kw = {k: v for k, v in {"max_iter": args.max_iter, "tol": args.tol}.items() if v is not None}
    if args.solver:
        solver_kw["solver"] = args.solver
    paths = args.checkpoint or shipped_models(getattr(args, "models_dir", None))
    args.eval_rows = []
    for path in paths:
        if recorded_kind(path) != "mnist":      # eval's own flags are the MNIST test set's; a task measures the rest
            r = evaluate_with_task(path, device)
            print_task_eval(r, args.json)
            args.eval_rows.append(r)
            continue
        r = evaluate_checkpoint(path, args.data_dir, device, args.seed, args.limit, solver_kw, args.no_verify,
                                progress=not args.json, amp=args.amp, sample=getattr(args, "sample", 0),
                                allow_other_data=getattr(args, "allow_other_data", False),
                                estimate=lambda s: print(s, file=sys.stderr, flush=True))
        _print_eval(r, args.json)
        args.eval_rows.append(r)
    return 0


def cmd_info(args) -> int:
    from deqnca.engine.checkpoint import read_checkpoint
    from deqnca.engine.summary import describe_checkpoint, record_json
    from deqnca.tasks import load_builtin_tasks

    load_builtin_tasks()                  # their model kinds describe their checkpoints
    _, meta = read_checkpoint(args.checkpoint, tensors=False)
    print(record_json(meta) if args.json else describe_checkpoint(meta, str(args.checkpoint)))
    return 0


# what a shipped model's record leaves out of a run's: the optimizer, the tensor file's name and hash (written
# anew) and the model config (written from the model)
_NOT_EXPORTED = ("optimizer", "weights_sha256", "weights_file", "model_config")


def cmd_export(args) -> int:
    """Strip a run's checkpoint to a shippable model: weights only, plus config, metrics, provenance."""
    from deqnca.engine.checkpoint import checkpoint_base, checkpoint_kind, save_checkpoint
    from deqnca.tasks import load

    model, meta = load(args.checkpoint)          # any kind: its record is kept, less the training state
    info = {k: v for k, v in meta.items() if k not in _NOT_EXPORTED}
    info["kind"] = checkpoint_kind(meta)
    history = meta.get("history") or []
    if history and "metrics" not in info:
        info["metrics"] = history[-1]
    info["provenance"] = {"source": str(args.checkpoint), "machine": args.machine, "date": args.date,
                          "command": args.command}
    if args.readout_symmetry is not None:
        if not hasattr(model, "set_readout_symmetry"):
            raise ConfigError("--readout-symmetry: only maze checkpoints (the geodesic model) have it")
        model.set_readout_symmetry(args.readout_symmetry)      # saved with the model's config
    dest = checkpoint_base(args.dest)
    writable_folder(dest.parent, "destination")
    existing = [p for p in (dest.parent / (dest.name + suffix) for suffix in (".json", ".safetensors")) if p.exists()]
    if existing and not args.overwrite:
        raise ConfigError(f"{existing[0]} exists; pass --overwrite to replace it, or choose another name")
    save_checkpoint(dest, model, None, info)
    print(f"exported {args.checkpoint} -> {dest}.safetensors / .json")
    return 0


def cmd_rollout(args) -> int:
    """Figure 1 for one test image: frames, GIF, residual/probability curves, and a JSON trace."""
    from deqnca.data.provenance import recorded_test_split
    from deqnca.tasks import load
    from deqnca.tasks.mnist.figures import draw_figure1

    device = setup_device(args.device)
    out = writable_folder(args.out)
    path = Path(args.checkpoint) if args.checkpoint else shipped_model("essay", args.models_dir)
    model, meta = load(path, device, kind="mnist")
    x, y, _, note = recorded_test_split(meta.get("data"), str(path), args.data_dir, False if args.no_verify else None,
                                        args.allow_other_data)
    if note:
        print(f"deqnca: note: {note}", file=sys.stderr)
    if not 0 <= args.index < len(x):
        raise ConfigError(f"--index {args.index}: the test set has images 0..{len(x) - 1}")
    label = int(y[args.index])
    stem = f"{path.name}-{args.index}"
    r, files = draw_figure1(model, x[args.index:args.index + 1].to(device), label, out, stem,
                            f"{path.name}: test image {args.index} (label {label})", steps=args.steps,
                            seed=args.seed)
    trace = {"checkpoint": str(path), "index": args.index, "label": label, "steps": args.steps,
             "rel_residual": r.rel_residual[0].tolist(),
             "prediction": r.probs[0].argmax(-1).tolist(),
             "p_label": r.probs[0, :, label].tolist(), "files": [str(f) for f in files]}
    write_text_atomic(out / f"{stem}.json", strict_json(trace))
    if args.json:
        print(strict_json(trace))
    else:
        print(f"label {label}; prediction after {args.steps} steps: {trace['prediction'][-1]} "
              f"(p={r.probs[0, -1].max():.3f}); final relative residual {trace['rel_residual'][-1]:.2e}")
        for f in files:
            print(f"  {f}")
    return 0


def cmd_demo(args) -> int:
    """The README's main job: the essay's result from the shipped models, then the NCA view."""
    from deqnca.reports import report

    writable_folder(args.out)
    args.checkpoint = None
    args.solver = args.max_iter = args.tol = None
    args.limit, args.amp = (500 if args.quick else 0), "off"     # the documented float32 numbers
    rc = cmd_eval(args)
    if rc:
        return rc
    from deqnca.web.export import write_site

    page = write_site(Path(args.out) / "web", args.models_dir)
    print(f"live page: {page}")
    args.live_page = "web/index.html"
    return report.main(args)


def add_cli(sub, train: bool = True) -> None:
    """`deqnca train | eval | info | export | rollout | demo` (`train`: the MNIST task's; False where `--task`
    names another task, whose own `train` cli/tasks.py builds)."""
    def common(p):
        p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
        p.add_argument("--seed", type=seed_int, default=0, help="random seed of the initial states' noise")
        data_flags(p)
        p.add_argument("--allow-other-data", action="store_true",
                       help="measure a model on data other than what it was trained on (its checkpoint records it)")
        p.add_argument("--models-dir", default=None, metavar="DIR",
                       help="folder of the shipped models (default: the ones installed with deqnca)")
        p.add_argument("--json", action="store_true", help="print machine-readable JSON")
        p.add_argument("--verbose", action="store_true", help="say which CPU path (threads, precision) was chosen")

    if train:
        add_train(sub)
    add_eval(sub, common)
    add_others(sub, common)


def add_train(sub) -> None:
    from deqnca.tasks.mnist.config import PRESETS, MnistConfig

    p = sub.add_parser("train", help="train a model: the MNIST task from a preset, or any task with --task NAME",
                       description="Train an MNIST model from a preset (or, with --task NAME, any registered task, "
                                   "a --plugin's included: `deqnca train --task NAME --help` lists its flags); every "
                                   "option is a flag or a --set key.")
    p.add_argument("--task", default="mnist", help="the task to train (default mnist; e.g. one a --plugin registers)")
    p.add_argument("--preset", default="essay", choices=PRESETS.names(),
                   help="the run's starting config (deqnca.tasks.mnist.config.PRESETS): essay or equilibrium; the "
                        "others are variants measured in docs/mnist.md (default essay)")
    add_run_flags(p, MnistConfig, "runs/<preset>-seed<seed>")
    data_flags(p)
    p.set_defaults(func=cmd_train)


def add_eval(sub, common) -> None:
    p = sub.add_parser("eval", help="evaluate checkpoints: MNIST models on the test set, other kinds by their task",
                       description="Evaluate checkpoints (default: both shipped MNIST models): an MNIST model on the "
                                   "MNIST test set; a model of another kind by its task's evaluation (Task.evaluate).")
    common(p)
    p.add_argument("checkpoint", nargs="*", help="checkpoint path(s) without suffix, or shipped model names "
                   "(default: mnist-essay and mnist-equilibrium)")
    p.add_argument("--solver", type=registered_solver, metavar="NAME",
                   help="a registered solver: rollout, fixed_point, anderson, broyden or one a --plugin registers")
    p.add_argument("--max-iter", type=steps_int, help=f"solver iterations (1..{MAX_STEPS:,}; default: the model's)")
    p.add_argument("--tol", type=nonneg_float, help="solver tolerance (default: the model's)")
    p.add_argument("--limit", type=nonneg_int, default=0, help="only the first N test images (default 0: all)")
    p.add_argument("--sample", type=nonneg_int, default=0,
                   help="only N test images evenly spaced through the set, with a 95%% interval (default 0: all)")
    p.add_argument("--amp", choices=["off", "bf16", "auto"], default="off",
                   help="bf16: solve under bfloat16 autocast (convolutions in bfloat16, state in float32); auto: "
                        "bf16 only where this CPU runs it faster and the model is a fixed-length rollout")
    p.set_defaults(func=cmd_eval)


def add_others(sub, common) -> None:
    p = sub.add_parser("info", help="summarise a checkpoint: kind, parameters, config, metrics (--json: all of it)")
    p.add_argument("checkpoint", help="a checkpoint path, or a shipped model name such as mnist-essay")
    p.add_argument("--json", action="store_true", help="print the whole record as JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("export", help="turn a run checkpoint (MNIST, grow, maze or cells) into a shippable model "
                       "(weights + JSON, no optimizer)")
    p.add_argument("checkpoint")
    p.add_argument("dest")
    p.add_argument("--machine", default="unknown", help="where it was trained, for the provenance record")
    p.add_argument("--date", default=time.strftime("%Y-%m-%d"))
    p.add_argument("--command", default="", help="the command that trained it")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model of that name")
    p.add_argument("--readout-symmetry", choices=["none", "d4"],
                   help="geodesic maze models: ship with this read-out symmetrisation (docs/mazes.md)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("rollout", help="replay a model's rule on one test image: frames, GIF, curves",
                       description="Figure 1: the rule iterated from noise as a cellular automaton.")
    common(p)
    p.add_argument("checkpoint", nargs="?", help="checkpoint or shipped model name (default: mnist-essay)")
    p.add_argument("--index", type=nonneg_int, default=7, help="test image index (0..9999)")
    p.add_argument("--steps", type=steps_int, default=64,
                   help=f"steps to iterate (1..{MAX_STEPS:,}; the GIF keeps at most 200 evenly spaced frames)")
    p.add_argument("--out", default="out/rollout")
    p.set_defaults(func=cmd_rollout)

    p = sub.add_parser("demo", help="the README main job: evaluate shipped models, draw the NCA view, write the report")
    common(p)
    p.add_argument("--out", default="out/demo", help="folder for figures and the HTML report")
    p.add_argument("--quick", action="store_true", help="smaller samples (for tests)")
    p.add_argument("--sample", type=nonneg_int, default=DEMO_SAMPLE,
                   help=f"evaluate this many test images, evenly spaced, with a 95%% interval (default {DEMO_SAMPLE}; "
                        "0: all 10,000)")
    p.set_defaults(func=cmd_demo)


DEMO_SAMPLE = 2000      # the main job's evaluation sample: its minutes fit any 2-core CPU (docs/speed.md)


def registered_solver(name: str) -> str:
    """`--solver NAME`, checked against the solver registry when given (so that --help needs no torch)."""
    import argparse

    from deqnca.core.solvers import SOLVERS

    if name not in SOLVERS:
        raise argparse.ArgumentTypeError(f"{name!r} is not a registered solver; choose one of "
                                         f"{', '.join(SOLVERS.names())}")
    return name


def data_flags(p):
    p.add_argument("--data-dir", default=None,
                   help="folder with the four MNIST-layout IDX files (default: a model's recorded data, else the MNIST "
                        "files installed with deqnca)")
    p.add_argument("--no-verify", action="store_true", help="skip the MNIST MD5 check (for Fashion-MNIST, KMNIST, ...)")
