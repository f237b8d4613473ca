"""`deqnca grow train | show | measure`: the growing NCA trained by BPTT or as an equilibrium."""
from __future__ import annotations

import sys
from pathlib import Path

from deqnca.core.configs import ConfigError, number_type
from deqnca.core.fileio import strict_json, write_text_atomic
from deqnca.engine.commandline import (
    MAX_STEPS,
    add_run_flags,
    build_config,
    finish_training,
    nonneg_float,
    options_from_args,
    positive_int,
    recorded_run,
    seed_int,
    steps_int,
    writable_folder,
)
from deqnca.engine.commandline import setup_device as _setup_device


def cmd_train(args) -> int:
    from deqnca.engine.trainer import fit
    from deqnca.tasks.grow.config import PRESETS, GrowConfig, sets_equilibrium_options
    from deqnca.tasks.grow.targets import load_target
    from deqnca.tasks.grow.task import GrowTask

    base = PRESETS.build(args.recipe)
    device = _setup_device(args.device)
    if args.rollout_steps:
        args.min_steps, args.max_steps = args.rollout_steps
    train, _, given = options_from_args(args, GrowConfig, base)
    cfg = build_config(GrowConfig, train, None)
    if cfg.trainer != "implicit" and sets_equilibrium_options(base):
        raise ConfigError(f"--recipe {args.recipe} sets the equilibrium trainer's options: "
                          "use it with --trainer implicit")
    out = writable_folder(args.out or f"runs/grow-{cfg.trainer}-{Path(cfg.target).stem}-seed{cfg.seed}")
    if args.resume:              # the run's own target unless one is given (the engine refuses another)
        saved = recorded_run(out).get("train") or {}
        cfg.target = saved["target"] if "target" not in given and isinstance(saved.get("target"), str) else cfg.target
        cfg.pad = saved["pad"] if "pad" not in given and isinstance(saved.get("pad"), int) else cfg.pad
    target = load_target(cfg.target, pad=cfg.pad)
    result = fit(GrowTask(cfg, target), out, device=device, resume=args.resume, overwrite=args.overwrite,
                 changed=given, log=lambda s: print(s, file=sys.stderr), progress=not args.json)
    return finish_training(args, out, result, "done: {checkpoint}  {global_step} steps in {seconds:.0f} s  "
                           "skipped {skipped_steps}, restored {restored}, extinctions {extinctions}")


def _load(path, device):
    """A grow checkpoint whose training record is checked too: its numbers set how long a replay runs."""
    from deqnca.core.configs import check_known_ranges
    from deqnca.engine.checkpoint import CheckpointError
    from deqnca.tasks import load
    from deqnca.tasks.grow.task import GrowConfig

    model, meta = load(path, device, kind="grow")
    try:
        check_known_ranges(GrowConfig, meta.get("train_config") or {}, f"{path}: train_config")
    except ConfigError as e:
        raise CheckpointError(f"{e}; the checkpoint is corrupt") from None
    return model, meta


def cmd_show(args) -> int:
    from deqnca.tasks.grow.replay import default_horizon, show

    device = _setup_device(args.device)
    out = writable_folder(args.out or Path("out/grow-show") / show_name(args.checkpoint))
    model, meta = _load(args.checkpoint, device)
    steps = args.steps or min(default_horizon(meta.get("train_config") or {}), MAX_STEPS)
    for f in show(model, out, steps, seed=args.seed):
        print(f)
    return 0


def show_name(checkpoint) -> str:
    """The folder `grow show` writes a checkpoint's pictures into by default, under out/grow-show/: the shipped
    model's name (lizard-bptt), or a run's folder for its `last`/`best` checkpoint."""
    p = Path(checkpoint)
    return p.parent.name if p.name in ("last", "best") and p.parent.name else p.name


def _markdown(rows: list[dict]) -> str:
    cols = ["checkpoint", "trainer", "train_steps", "train_seconds", "loss_grown", "loss_persist_10x",
            "loss_regenerated", "loss_fixed_point", "fixed_point_rel_residual", "seconds_to_threshold",
            "divergences", "extinctions"]
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else ("—" if v is None else str(v))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def cmd_measure(args) -> int:
    from deqnca.tasks.grow.replay import measure

    device = _setup_device(args.device)
    out = writable_folder(args.out)
    rows = []
    for path in args.checkpoint:
        model, meta = _load(path, device)
        metrics = Path(path).parent / "metrics.jsonl"
        rows.append({"checkpoint": str(path), **measure(model, meta, metrics, samples=args.samples,
                                                        seed=args.seed, threshold=args.threshold,
                                                        horizon=args.horizon)})
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "measure.json", strict_json(rows, indent=1) + "\n")
    write_text_atomic(out / "measure.md", _markdown(rows))
    print(strict_json(rows) if args.json else _markdown(rows), end="")
    return 0


horizon_int = number_type(int, 1, MAX_STEPS // 10, name="horizon")    # replayed 10x for persistence


def add_cli(sub) -> None:
    grow = sub.add_parser("grow", help="growing NCA (Mordvintsev et al. 2020): train by BPTT or as an equilibrium",
                          description="Growing neural cellular automata, trained by BPTT or implicitly.")
    gsub = grow.add_subparsers(dest="grow_command", required=True)

    def common(p):
        p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
        p.add_argument("--json", action="store_true", help="print machine-readable JSON")

    p = gsub.add_parser("train", help="train a growing NCA on a target image",
                        description="Train a growing NCA; every option of the task is a flag or a --set key.")
    from deqnca.tasks.grow.config import PRESETS, GrowConfig

    p.add_argument("--recipe", choices=PRESETS.names(), default="equilibrium",
                   help="the preset the run starts from (deqnca.tasks.grow.config.PRESETS), the equilibrium "
                        "trainer's settings: 'equilibrium' (default) or 'window' (the windowed phantom gradient "
                        "that grows the lizard, docs/grow.md); options given explicitly win")
    p.add_argument("--rollout-steps", type=steps_int, nargs=2, metavar=("MIN", "MAX"),
                   help="steps per batch, drawn in MIN..MAX (= --min-steps MIN --max-steps MAX)")
    add_run_flags(p, GrowConfig, "runs/grow-<trainer>-<target>-seed<seed>")
    p.set_defaults(func=cmd_train)

    p = gsub.add_parser("show", help="growth and regeneration GIFs and a frame strip from a checkpoint")
    common(p)
    p.add_argument("checkpoint")
    p.add_argument("--out", help="folder (default: out/grow-show/<model name>, e.g. out/grow-show/lizard-bptt)")
    p.add_argument("--steps", type=steps_int, help=f"steps to grow (1..{MAX_STEPS:,}; default: the run's longest "
                   "rollout, at least 96; the GIFs keep at most 200 evenly spaced frames)")
    p.add_argument("--seed", type=seed_int, default=0)
    p.set_defaults(func=cmd_show)

    p = gsub.add_parser("measure", help="loss after growth, persistence, regeneration, time to threshold")
    common(p)
    p.add_argument("checkpoint", nargs="+")
    p.add_argument("--out", default="out/grow-measure")
    p.add_argument("--samples", type=positive_int, default=8, help="replays averaged per number")
    p.add_argument("--threshold", type=nonneg_float, default=0.01,
                   help="training-loss threshold for time-to-threshold")
    p.add_argument("--horizon", type=horizon_int,
                   help="growth steps replayed, 10x for persistence (default: each run's longest rollout, at least 96)")
    p.add_argument("--seed", type=seed_int, default=0)
    p.set_defaults(func=cmd_measure)
