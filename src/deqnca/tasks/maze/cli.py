"""`deqnca maze generate|train|eval|show`: the maze experiment's command line. The parts live in
`deqnca.tasks.maze` (model, task, evaluate, pictures); docs/mazes.md has the method, commands and numbers."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from deqnca.core.configs import ConfigError, number_type
from deqnca.core.fileio import strict_json
from deqnca.engine.commandline import (
    MAX_STEPS,
    add_run_flags,
    build_config,
    check_model_buildable,
    finish_training,
    nonneg_int,
    options_from_args,
    seed_int,
    setup_device,
    steps_int,
    writable_folder,
)
from deqnca.tasks.maze import generate as mazes
from deqnca.tasks.maze.model_config import DEFAULT_LIMITS, MazeNetConfig


def maze_size(text: str) -> int:
    """argparse type: an odd maze size 3..MAX_SIZE (a one-line usage error otherwise)."""
    import argparse

    value = number_type(int, 3, mazes.MAX_SIZE, name="maze size")(text)
    if value % 2 == 0:
        raise argparse.ArgumentTypeError(f"{value} is even: a maze size is odd (9, 13, ..., 201)")
    return value


count_int = number_type(int, 1, mazes.MAX_COUNT, name="count")


def _sizes_arg(p, default):
    p.add_argument("--sizes", type=maze_size, nargs="+", default=list(default),
                   help=f"maze sizes, odd, 3..{mazes.MAX_SIZE} (default {default})")


def cmd_generate(args) -> int:
    counts = args.count or mazes.DEFAULT_COUNTS[args.split]
    for s in args.sizes:
        mazes.check_size(s)
    for s in args.sizes:
        t = time.time()
        lay = mazes.load_set(s, counts, args.split, seed=args.seed, cache=args.cache, generator=args.generator)
        where = mazes.cache_path(args.cache or mazes.default_cache(), args.split, s, args.seed, args.generator)
        print(f"{args.split} size {s}: {len(lay)} mazes, {mazes.image_side(s)}x{mazes.image_side(s)} px "
              f"({time.time() - t:.1f}s) in {where}")
    return 0


def cmd_train(args) -> int:
    from deqnca.engine.trainer import fit
    from deqnca.tasks.maze.config import PRESETS, MazeConfig
    from deqnca.tasks.maze.model import MazeSolverNet
    from deqnca.tasks.maze.task import MazeTask

    device = setup_device(args.device)
    base = PRESETS.build(args.preset)
    width = base.model["width"] if args.width is None else args.width
    if args.cache:
        base.cache = args.cache
    train, model_over, given = options_from_args(args, MazeConfig, base, MazeNetConfig)
    model = MazeNetConfig.from_dict({**base.model, "width": width, **model_over}).to_dict()
    cfg = build_config(MazeConfig, train, model)
    check_model_buildable(lambda: MazeSolverNet(cfg.model), "maze model config")    # an unknown solver: exit 2
    try:
        mazes.check_size(cfg.train_size)
    except ValueError as e:
        raise ConfigError(f"--train-size: {e}") from None
    out = writable_folder(args.out or f"runs/maze-{args.preset}-w{width}-seed{cfg.seed}")
    result = fit(MazeTask(cfg), out, device=device, resume=args.resume, overwrite=args.overwrite, changed=given,
                 log=lambda s: print(s, file=sys.stderr), progress=not args.json)
    return finish_training(args, out, result, "done: {checkpoint}  parameters {parameters}  held-out solved "
                           + f"{{val_solved_{cfg.train_size}:.4f}}")


def cmd_eval(args) -> int:
    from deqnca.engine.hardware import fix_mmap_threshold
    from deqnca.tasks.maze.evaluate import evaluate_checkpoints, parse_size_map

    fix_mmap_threshold()
    device = setup_device(args.device)
    for s in args.sizes:
        mazes.check_size(s)
    try:
        limits = parse_size_map(args.limit_per_size, args.sizes, DEFAULT_LIMITS)
        max_iters = parse_size_map(args.max_iters, args.sizes)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    _check_map("--limit-per-size", limits, 1, mazes.MAX_COUNT)
    _check_map("--max-iters", max_iters, 1, MAX_STEPS)
    limits = {s: v or 100 for s, v in limits.items()}
    for s, v in limits.items():
        if args.first + v > mazes.MAX_COUNT:
            raise ConfigError(f"--first {args.first} + {v} mazes of size {s}: the test sets hold at most "
                              f"{mazes.MAX_COUNT:,}")
    writable_folder(args.out)
    log = (lambda s: print(s, file=sys.stderr))
    res = evaluate_checkpoints(args.checkpoint, args.sizes, limits, max_iters, device, args.out,
                               args.aa_count, args.cache, log, generators=args.generators, compile=args.compile,
                               readout_symmetry=args.readout_symmetry, curve=not args.no_curve, first=args.first,
                               solver=args.solver)
    if args.json:
        print(strict_json(res))
    else:
        print(f"wrote {Path(args.out) / 'eval.json'}, accuracy_vs_size.png, accuracy_vs_iters.png")
    return 0


def _check_map(flag, values: dict, lo: int, hi: int) -> None:
    for s, v in values.items():
        if v is not None and not lo <= v <= hi:
            raise ConfigError(f"{flag}: {v} for size {s} is out of range ({lo:,} to {hi:,})")


def cmd_show(args) -> int:
    if args.index >= mazes.DEFAULT_COUNTS["test"]:
        raise ConfigError(f"--index {args.index}: the test sets hold mazes 0..{mazes.DEFAULT_COUNTS['test'] - 1}")
    writable_folder(args.out)
    from deqnca.engine.hardware import fix_mmap_threshold
    from deqnca.tasks.maze.pictures import show

    fix_mmap_threshold()

    files = show(args.checkpoint, args.size, args.out, args.index, args.max_iters, device=setup_device(args.device),
                 cache=args.cache, log=lambda s: print(s, file=sys.stderr), generator=args.generator,
                 readout_symmetry=args.readout_symmetry, solver=args.solver)
    for f in files:
        print(f)
    return 0


def maze_spec(text: str) -> str:
    """argparse type of a maze spec (deqnca.tasks.maze.loops): its canonical name, or the spec syntax."""
    from deqnca.tasks.maze.loops import parse_spec
    try:
        return parse_spec(text).name
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


SPEC_HELP = ("dfs, prim, kruskal, wilson, division (perfect mazes), GEN+loops=F (F·n² extra openings), "
             "percolation+p=P, each optionally +anywhere (starts not at the carver's root); docs/mazes.md")


def generator_flag(p):
    p.add_argument("--generator", type=maze_spec, default=mazes.DEFAULT_GENERATOR, metavar="SPEC",
                   help=f"maze distribution (default dfs: the benchmark's depth-first mazes): {SPEC_HELP}")


def symmetry_flag(p):
    p.add_argument("--readout-symmetry", choices=["none", "d4"],
                   help="geodesic models: d4 reads out the mean over the 8 rotations and reflections of the fixed "
                        "point (one solve: the rule is equivariant; docs/mazes.md); default: the checkpoint's")


def solver_flag(p, what: str):
    p.add_argument("--solver", choices=["fixed_point", "wavefront"],
                   help=f"geodesic and trace models: {what} (default wavefront: Picard's states bit for bit, "
                        "evaluated only where they change, ~200x faster at 201x201; docs/mazes.md); other models "
                        "keep theirs")


def add_cli(sub) -> None:
    """`deqnca maze generate|train|eval|show`."""
    maze = sub.add_parser("maze", help="train on small mazes, solve large ones (DT-recall vs DEQ)",
                          description="Mazes: easy-to-hard generalisation and path independence.")
    msub = maze.add_subparsers(dest="maze_command", required=True)

    def common(p, device=True):
        p.add_argument("--cache", default=None, help="maze cache folder (default ~/.cache/deqnca/mazes "
                       "or $DEQNCA_MAZE_CACHE)")
        if device:
            p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")

    p = msub.add_parser("generate", help="generate (and cache) benchmark maze sets")
    common(p, device=False)
    _sizes_arg(p, mazes.TEST_SIZES)
    p.add_argument("--count", type=count_int, help="mazes per size (default: 50000 train, 1000 test)")
    p.add_argument("--split", choices=mazes.SPLITS, default="test")
    p.add_argument("--seed", type=seed_int, default=0)
    generator_flag(p)
    p.set_defaults(func=cmd_generate)

    p = msub.add_parser("train", help="train a maze solver on small mazes",
                        description="Train a maze solver; every training option is a flag, every option a --set key.")
    from deqnca.tasks.maze.config import PRESETS, MazeConfig

    p.add_argument("--cache", default=None, help="maze cache folder (default ~/.cache/deqnca/mazes "
                   "or $DEQNCA_MAZE_CACHE)")
    p.add_argument("--model", dest="preset", choices=PRESETS.names(), required=True,
                   help="the preset the run starts from (deqnca.tasks.maze.config.PRESETS): dt, deq or geodesic "
                        "(docs/mazes.md)")
    p.add_argument("--width", type=number_type(int, 1, 4096, name="width"),
                   help="channels of the state (1..4096; default: the preset's, 32)")
    add_run_flags(p, MazeConfig, "runs/maze-<model>-w<width>-seed<seed>")
    p.set_defaults(func=cmd_train)

    p = msub.add_parser("eval", help="accuracy vs size and vs iterations, AA score, time and memory")
    common(p)
    p.add_argument("checkpoint", nargs="+", help="checkpoint path(s), e.g. runs/maze-dt-w32-seed0/last")
    _sizes_arg(p, mazes.TEST_SIZES)
    p.add_argument("--limit-per-size", help="mazes per size, e.g. 9=1000,59=200,201=20 or one number "
                   f"(default {','.join(f'{k}={v}' for k, v in DEFAULT_LIMITS.items())})")
    p.add_argument("--max-iters", help="test-time iteration cap, one number or SIZE=N pairs "
                   "(default max(100, 4 x image side); geodesic: its guaranteed bound, it stops at its fixed point)")
    p.add_argument("--aa-count", type=nonneg_int, default=50, help="mazes per size re-solved for the AA score")
    p.add_argument("--generators", nargs="+", type=maze_spec, default=[mazes.DEFAULT_GENERATOR], metavar="SPEC",
                   help=f"maze distributions to evaluate every checkpoint on (default dfs): {SPEC_HELP}")
    p.add_argument("--out", default="out/maze-eval", help="folder for eval.json and the plots (default out/maze-eval)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the geodesic rule's step first (same states bit for bit; not faster at 59x59 "
                        "on a CPU: benchmarks/geodesic_solve.py; other models ignore it)")
    symmetry_flag(p)
    solver_flag(p, "the solver to their fixed point")
    p.add_argument("--first", type=nonneg_int, default=0,
                   help="skip the first N mazes of every set: evaluate mazes N .. N + limit - 1 (to extend an "
                        "evaluation in parts; failed mazes keep their index in the whole set)")
    p.add_argument("--no-curve", action="store_true",
                   help="read out only at the end (the fixed point), not at every mark of the accuracy-against-"
                        "iterations curve: ~15-20 fewer read-outs per maze (what d4 costs on small mazes)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = msub.add_parser("show", help="figure of a solved maze and the GIF of it being solved")
    common(p)
    p.add_argument("checkpoint")
    p.add_argument("--size", type=maze_size, default=201)
    p.add_argument("--index", type=nonneg_int, default=0,
                   help=f"which test maze (0..{mazes.DEFAULT_COUNTS['test'] - 1})")
    p.add_argument("--max-iters", type=steps_int,
                   help=f"iterations (1..{MAX_STEPS:,}; default max(100, 4 x image side))")
    p.add_argument("--out", default="out/maze-show", help="folder for the figure and the GIF (default out/maze-show)")
    generator_flag(p)
    symmetry_flag(p)
    solver_flag(p, "the solver that counts the steps to their fixed point (the pictures are always Picard's steps)")
    p.set_defaults(func=cmd_show)
