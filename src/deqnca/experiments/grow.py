"""`deqnca grow train | show | measure`: the growing NCA trained by BPTT or as an equilibrium."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def _setup_device(arg: str) -> str:
    from ..cli import _device, _threads

    device = _device(arg)
    _threads(device)
    return device


def cmd_train(args) -> int:
    from ..data.targets import load_target
    from ..grow.train import RECIPES, GrowTrainConfig, train
    from ..train import distributed

    if args.recipe != "equilibrium" and args.trainer != "implicit":
        raise ValueError(f"--recipe {args.recipe} sets the equilibrium trainer's options: use it with --trainer implicit")
    device = _setup_device(args.device)
    target = load_target(args.target, pad=args.pad)
    overrides = {k: v for k, v in vars(args).items()
                 if k in GrowTrainConfig.__dataclass_fields__ and v is not None}
    if args.rollout_steps:
        overrides["min_steps"], overrides["max_steps"] = args.rollout_steps
    cfg = GrowTrainConfig.from_dict({**RECIPES[args.recipe], **overrides})
    out = Path(args.out or f"runs/grow-{cfg.trainer}-{Path(cfg.target).stem}-seed{cfg.seed}")
    try:
        r = train(cfg, target, out, device=device, resume=args.resume, log=lambda s: print(s, file=sys.stderr),
                  progress=not args.json)
    except BaseException:
        distributed.shutdown()
        raise
    if int(os.environ.get("RANK", "0")) != 0:      # under torchrun, rank 0 alone reports
        return distributed.finish(0)
    summary = {"out": r["out"], "steps": r["step"], "seconds": round(r["elapsed_s"], 1), **r["counters"]}
    print(json.dumps(summary) if args.json else
          f"done: {out / 'last'}  {r['step']} steps in {r['elapsed_s']:.0f} s  {r['counters']}")
    return distributed.finish(0)                    # under torchrun: ends the process here


def cmd_show(args) -> int:
    from ..grow.replay import default_horizon, show
    from ..grow.train import load_grow_checkpoint

    device = _setup_device(args.device)
    model, meta = load_grow_checkpoint(args.checkpoint, device)
    steps = args.steps or default_horizon(meta["train_config"])
    out = Path(args.out or Path(args.checkpoint).parent / "show")
    for f in show(model, out, steps, seed=args.seed):
        print(f)
    return 0


def _markdown(rows: list[dict]) -> str:
    cols = ["checkpoint", "trainer", "train_steps", "train_seconds", "loss_grown", "loss_persist_10x",
            "loss_regenerated", "loss_fixed_point", "fixed_point_rel_residual", "seconds_to_threshold",
            "divergences", "extinctions"]
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else ("—" if v is None else str(v))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def cmd_measure(args) -> int:
    from ..grow.replay import measure
    from ..grow.train import load_grow_checkpoint

    device = _setup_device(args.device)
    rows = []
    for path in args.checkpoint:
        model, meta = load_grow_checkpoint(path, device)
        metrics = Path(path).parent / "metrics.jsonl"
        rows.append({"checkpoint": str(path), **measure(model, meta, metrics, samples=args.samples,
                                                        seed=args.seed, threshold=args.threshold,
                                                        horizon=args.horizon)})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "measure.json").write_text(json.dumps(rows, indent=1) + "\n")
    (out / "measure.md").write_text(_markdown(rows))
    print(json.dumps(rows) if args.json else _markdown(rows), end="")
    return 0


def add_cli(sub) -> None:
    grow = sub.add_parser("grow", help="growing NCA (Mordvintsev et al. 2020): train by BPTT or as an equilibrium",
                          description="Growing neural cellular automata, trained by BPTT or implicitly.")
    gsub = grow.add_subparsers(dest="grow_command", required=True)

    def common(p):
        p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
        p.add_argument("--json", action="store_true", help="print machine-readable JSON")

    p = gsub.add_parser("train", help="train a growing NCA on a target image")
    common(p)
    p.add_argument("--trainer", choices=["bptt", "implicit"], default="bptt")
    p.add_argument("--recipe", choices=["equilibrium", "window"], default="equilibrium",
                   help="the equilibrium trainer's settings: 'equilibrium' (default: 64..96 growth steps, 32 solver "
                        "steps, phantom gradient through 8 steps at the fixed point) or 'window' (the windowed "
                        "phantom gradient that grows the lizard, docs/grow.md); options given explicitly win")
    p.add_argument("--target", default="lizard", help="lizard, small or a path to an RGBA image (default lizard)")
    p.add_argument("--pad", type=int, help="transparent cells added on each side of the target image")
    p.add_argument("--variant", choices=["growing", "persistent", "regenerating"])
    p.add_argument("--steps", type=int, help="optimizer steps (default 8000)")
    p.add_argument("--time-budget", type=float, help="stop after this many seconds of training")
    p.add_argument("--out", help="run folder (default runs/grow-<trainer>-<target>-seed<seed>)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--init-from", metavar="CHECKPOINT",
                   help="start from another grow run's weights (fresh optimizer and pool), e.g. a growing-variant "
                        "run continued as persistent: the paper's staged curriculum")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--pool-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--rollout-steps", type=int, nargs=2, metavar=("MIN", "MAX"),
                   help="steps per batch, drawn in MIN..MAX: BPTT's horizon, the implicit trainer's growth phase")
    p.add_argument("--solver", choices=["rollout", "fixed_point", "anderson", "broyden"])
    p.add_argument("--solver-iter", type=int)
    p.add_argument("--gradient", choices=["implicit", "phantom"])
    p.add_argument("--residual-weight", type=float, help="weight of ‖f(z*)−z*‖² (implicit trainer)")
    p.add_argument("--jac-weight", type=float, help="weight of the Jacobian regulariser (implicit trainer)")
    p.add_argument("--restart-noise", type=float,
                   help="std of the noise added to z* on live cells before the phantom gradient's steps "
                        "(implicit trainer, phantom gradient): trains the fixed point to attract")
    p.add_argument("--spectral-weight", type=float,
                   help="weight of the hinge penalty on the spectral radius of df/dz at z* (implicit trainer)")
    p.add_argument("--spectral-target", type=float, help="the radius above which that penalty acts (default 0.95)")
    p.add_argument("--alive-surrogate", type=float, metavar="TAU",
                   help="give the alive mask a straight-through sigmoid gradient of width TAU (default 0: none)")
    p.add_argument("--phantom-k", type=int, help="differentiated steps of the phantom gradient (default 8)")
    p.add_argument("--phantom-map", choices=["expected", "stochastic"],
                   help="what the solver and the phantom gradient's steps iterate: the expected map (default; its "
                        "fixed points are the stochastic rule's) or the stochastic rule, for windows that end "
                        "mid-growth")
    p.add_argument("--seeds", type=int, help="pool variants: samples per batch restarted from the seed (default 1)")
    p.add_argument("--divergence-rel", type=float, metavar="R",
                   help="a solve ending above this relative residual counts as diverged and a batch mostly of "
                        "those is undone (default 0.1; non-finite always counts). Raise it when the solve is "
                        "deliberately short and ends mid-growth, e.g. with --solver-iter 1")
    p.add_argument("--spectral-every", type=int, help="steps between spectral-radius measurements (0 = never)")
    p.add_argument("--log-every", type=int)
    p.set_defaults(func=cmd_train)

    p = gsub.add_parser("show", help="growth and regeneration GIFs and a frame strip from a checkpoint")
    common(p)
    p.add_argument("checkpoint")
    p.add_argument("--out", help="folder (default: <checkpoint folder>/show)")
    p.add_argument("--steps", type=int, help="steps to grow (default: the run's longest rollout, at least 96)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_show)

    p = gsub.add_parser("measure", help="loss after growth, persistence, regeneration, time to threshold")
    common(p)
    p.add_argument("checkpoint", nargs="+")
    p.add_argument("--out", default="out/grow-measure")
    p.add_argument("--samples", type=int, default=8, help="replays averaged per number")
    p.add_argument("--threshold", type=float, default=0.01, help="training-loss threshold for time-to-threshold")
    p.add_argument("--horizon", type=int,
                   help="growth steps replayed, 10x for persistence (default: each run's longest rollout, at least 96)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_measure)
