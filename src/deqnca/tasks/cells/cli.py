"""`deqnca cells train | eval | figures`: self-classifying MNIST digits (Randazzo et al., Distill 2020), the article's
model trained by BPTT or the equilibrium model trained implicitly."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from deqnca.core.fileio import read_json_bounded, strict_json, write_text_atomic
from deqnca.engine.commandline import add_run_flags, build_config, finish_training, options_from_args
from deqnca.engine.commandline import setup_device as _setup_device


def cmd_train(args) -> int:
    from deqnca.engine.trainer import fit
    from deqnca.tasks.cells.config import PRESETS, CellsConfig
    from deqnca.tasks.cells.task import CellsTask

    device = _setup_device(args.device)
    train, _, given = options_from_args(args, CellsConfig, PRESETS.build(args.model or "article"))
    cfg = build_config(CellsConfig, train, None)
    out = Path(args.out or f"runs/cells-{cfg.model}-seed{cfg.seed}")
    result = fit(CellsTask(cfg), out, device=device, resume=args.resume, overwrite=args.overwrite, changed=given,
                 log=lambda s: print(s, file=sys.stderr), progress=not args.json)
    return finish_training(args, out, result, "done: {checkpoint}  {global_step} steps in {seconds:.0f} s  "
                           "skipped {skipped_steps}, restored {restored}")


def _pct(v) -> str:
    return "—" if v is None else f"{100 * v:.1f}%"


def table(rows: list[dict], marks) -> str:
    """The article's table (top cell accuracy, accuracy at 200, top total agreement, agreement at 200),
    then the later marks and the relative residual, one row per evaluation."""
    later = [m for m in marks if m > 200]
    cols = ["", "digits", "top accuracy", "accuracy at 200", "top agreement", "agreement at 200"]
    cols += [f"{k} at {m:,}" for m in later for k in ("accuracy", "agreement")]
    cols += [f"residual at {m:,}" for m in [m for m in marks if m >= 200]]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        at, top = r["at"], r["top"]
        cells = [r["name"], str(r["digits"]),
                 f"{_pct(top['accuracy']['value'])} (step {top['accuracy']['step']})",
                 _pct(at.get(200, {}).get("accuracy")),
                 f"{_pct(top['agreement']['value'])} (step {top['agreement']['step']})",
                 _pct(at.get(200, {}).get("agreement"))]
        cells += [_pct(at.get(m, {}).get(k)) for m in later for k in ("accuracy", "agreement")]
        cells += [residual_text(at[m]) if m in at else "—" for m in marks if m >= 200]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def residual_text(row: dict, digits: int = 2) -> str:
    """An evaluation row's mean relative residual, and how many states were not finite where any."""
    n = row.get("nonfinite", 0)
    return f"{row['rel_residual']:.{digits}e}" + (f" ({n} states not finite)" if n else "")


class _ShardError(argparse.ArgumentTypeError, ValueError):
    """A bad `--shard` (argparse reports it as a usage error with this message)."""


def _shard(text: str) -> tuple[int, int]:
    """`--shard K/N`, checked when the command line is parsed: a bad value is a usage error (exit 2)."""
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise _ShardError(f"{text!r}: write K/N, e.g. 0/2 (the first of two halves)") from None
    if not (n >= 1 and 0 <= k < n):
        raise _ShardError(f"{text!r}: K/N with 0 <= K < N, e.g. 0/2 (the first of two halves)")
    return k, n


_shard.__name__ = "shard"


def cmd_eval(args) -> int:
    import torch

    from deqnca.data.provenance import recorded_test_split
    from deqnca.tasks import load
    from deqnca.tasks.cells.attacks import pair_different_labels, run_attacks
    from deqnca.tasks.cells.model import (
        canvas_batch,
        evaluate,
        evaluate_solved,
        mutation_test,
        resize_digits,
        truth_map,
    )

    device = _setup_device(args.device)
    model, meta = load(args.checkpoint, device, kind="cells")
    if args.compile:
        model.rule.compile_for_eval()
    size = meta["train_config"].get("size", 28)
    marks = tuple(sorted(int(m) for m in args.marks.split(",")))
    xt, yt, _, note = recorded_test_split(meta.get("data"), str(args.checkpoint))
    if note:
        print(f"deqnca: note: {note}", file=sys.stderr)
    idx = torch.linspace(0, len(xt) - 1, min(args.images, len(xt))).long()      # evenly spaced test digits
    shard, shards = args.shard
    idx = idx[shard::shards]                  # one of `shards` interleaved slices (scripts/cells_campaign.py merges)
    x, y = resize_digits(xt[idx], size), yt[idx]
    name = meta["train_config"].get("model", "?")
    kw = {"batch_size": args.batch_size, "seed": args.seed, "device": device}
    result = {"checkpoint": str(args.checkpoint), "model": name, "size": size, "images": len(x), "marks": marks,
              "compiled": bool(args.compile),
              "shard": f"{shard}/{shards}"}
    rows = [{"name": name, **evaluate(model, x, truth_map(x, y), marks=marks, **kw)}]
    if args.mutation:
        # a digit of the same label would pass for a model that ignored the change: pair different labels only
        perm = pair_different_labels(y, args.seed)
        m = mutation_test(model, x, y, x[perm], y[perm], marks=(200,), **kw)
        rows.append({"name": f"{name}, 200 steps after a mutation at 200", **m["after"]})
        result["mutation"] = {"pairing": "a digit of another label, each digit once", "new_index": perm.tolist()}
    if args.canvases:
        from deqnca.tasks.mnist.panoramas import make_panoramas

        if size != 28:
            raise ValueError("canvases hold 28×28 digits: evaluate a model trained at --size 28")
        cx, ct, cs = canvas_batch(make_panoramas(xt, yt, args.canvases, size=84, per_canvas=3, seed=args.seed))
        rows.append({"name": f"{name}, {args.canvases} canvases of 3 digits", **evaluate(
            model, cx, ct, cs, marks=tuple(m for m in marks if m <= 1000), **kw)})
    if args.attacks:
        result["attacks"] = run_attacks(model, xt, yt, size, n=args.attack_digits, horizon=args.attack_horizon,
                                        cells_per_digit=args.attack_cells, **kw)
    if args.solve:
        result["solver"] = args.solver
        result["solved"] = evaluate_solved(model, x, truth_map(x, y), solver=args.solver, max_iter=args.max_iter,
                                           tol=args.tol, batch_size=args.batch_size, device=device)
    for r in rows:
        if not args.curves:
            del r["curve"]
    result["rows"] = rows
    if args.out:
        write_text_atomic(Path(args.out), strict_json(result, indent=1) + "\n")
    if args.json:
        print(strict_json(result))
        return 0
    _print_eval(result, marks, args.solver)
    return 0


def _print_eval(result: dict, marks, solver: str) -> None:
    """The table of `cells eval`, then a line each for the canvases, the mutation, the fixed point and the
    attacks' table where they were measured."""
    rows = result["rows"]
    print(table(rows, marks), end="")
    for r in rows[1:]:
        if "canvases" in r["name"]:
            print(f"per-digit accuracy on canvases at 200: {_pct(r['at'].get(200, {}).get('digit_accuracy'))}")
        if "mutation" in r["name"]:
            print(f"mutation: at step 200 every digit was replaced by a digit of another label (each digit once); "
                  f"200 steps later {_pct(r['at'][200]['accuracy'])} of the cells give the new digit's label, "
                  "never the old one's: that share of cells followed the change of input to the new class")
    if "attacks" in result:
        from deqnca.tasks.cells.attacks import attack_table

        print(attack_table([(result["model"], result["attacks"])]), end="")
    if "solved" in result:
        s = result["solved"]
        print(f"at the fixed point ({solver}, {s['nstep']:.0f} steps, residual {s['rel_residual']:.1e}): "
              f"accuracy {_pct(s['accuracy'])}, agreement {_pct(s['agreement'])}")


def cmd_figures(args) -> int:
    """The figures of docs/cells.md for some checkpoints: curves, label-map GIFs, the mutation, canvases."""
    from deqnca.tasks import load
    from deqnca.tasks.cells.figures import write_figures

    device = _setup_device(args.device)
    models = {}
    for checkpoint in args.checkpoint:
        model, meta = load(checkpoint, device, kind="cells")
        name = base = meta["train_config"].get("model") or Path(checkpoint).name
        for n in range(2, len(args.checkpoint) + 2):     # two checkpoints of one model: article, article-2
            if name not in models:
                break
            name = f"{base}-{n}"
        models[name] = (model, meta)
    reports = {}
    for f in args.eval_json:
        result = read_json_bounded(f)
        row = ((result.get("rows") if isinstance(result, dict) else None) or [{}])[0]
        if "curve" not in row:
            raise ValueError(f"{f}: no curves in it; write it with `deqnca cells eval --curves --out FILE`")
        reports[result.get("model") or Path(f).stem] = row
    out = Path(args.out)
    r = write_figures(models, out, n_digits=args.digits, steps=args.steps, eval_reports=reports,
                      n_canvases=args.canvases, seed=args.seed, device=device,
                      log=lambda s: print(s.strip(), file=sys.stderr))
    for path in [r["curves"], *(f for files in r["files"].values() for f in files)]:
        print(path)
    return 0


def add_cli(sub) -> None:
    cells = sub.add_parser("cells", help="self-classifying MNIST digits: the article's NCA (BPTT) or an equilibrium",
                           description="Self-classifying MNIST digits (Randazzo et al., Distill 2020).")
    csub = cells.add_subparsers(dest="cells_command", required=True)
    from deqnca.tasks.cells.config import CellsConfig

    p = csub.add_parser("train", help="train the article's model (BPTT) or the equilibrium model",
                        description="Train a self-classifying CA; every option of the task is a flag or a --set key. "
                        "--model NAME starts from that model's preset (deqnca.tasks.cells.config.PRESETS): "
                        "equilibrium and consensus re-default loss, batch, rate and schedule.")
    add_run_flags(p, CellsConfig, "runs/cells-<model>-seed<seed>")
    p.set_defaults(func=cmd_train)

    p = csub.add_parser("eval", help="cell accuracy and total agreement at 20..10,000 steps, the article's table")
    p.add_argument("checkpoint")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    p.add_argument("--images", type=int, default=1000, help="evenly spaced test digits (default 1000; 10000: all)")
    p.add_argument("--marks", default="20,80,200,1000,10000", help="steps reported (comma-separated)")
    p.add_argument("--batch-size", type=int, default=256, help="digits per rollout (default 256, as cells.evaluate)")
    p.add_argument("--seed", type=int, default=0, help="seeds the stochastic steps and the mutation pairs")
    p.add_argument("--shard", type=_shard, default="0/1", help="K/N: only every N-th of the chosen digits, from the "
                   "K-th (to run N processes side by side; scripts/cells_campaign.py merges them)")
    p.add_argument("--mutation", action="store_true", help="also the mutation test (a new digit at step 200)")
    p.add_argument("--attacks", action="store_true", help="also the attacks (docs/cells.md): one cell's state "
                   "replaced by another digit's at step 200, 3 stray pixels, digits in several pieces (~150,000 "
                   "digit-steps at the defaults: minutes on a CPU, so not part of every eval)")
    p.add_argument("--attack-digits", type=int, default=50,
                   help="evenly spaced test digits attacked and given strays; as many of one and of several "
                        "pieces (default 50; the digits are not --images', nor sharded)")
    p.add_argument("--attack-horizon", type=int, default=400, help="steps watched after the attack (default 400)")
    p.add_argument("--attack-cells", type=int, default=4, help="cells attacked per digit, one at a time (default 4)")
    p.add_argument("--canvases", type=int, default=0, help="also N 84×84 canvases of 3 digits each")
    p.add_argument("--solve", action="store_true", help="also the metrics at the fixed point a solver reaches")
    p.add_argument("--solver", default="anderson")
    p.add_argument("--max-iter", type=int, default=200)
    p.add_argument("--tol", type=float, default=1e-5)
    p.add_argument("--curves", action="store_true", help="keep the per-step curves in the JSON")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the rule first (about 2x faster rollouts on a CPU after ~10 s of compiling; "
                        "the random draws are the same, the arithmetic differs by float rounding)")
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.set_defaults(func=cmd_eval)

    p = csub.add_parser("figures", help="the figures of docs/cells.md: curves, label-map GIFs, mutation, canvases",
                        description="Draw, for each checkpoint, the label maps over time (GIF and PNG), the mutation "
                        "and the canvases, and one figure of cell accuracy and total agreement against steps.")
    p.add_argument("checkpoint", nargs="+", help="checkpoints of `deqnca cells train` or shipped names (cells/article)")
    p.add_argument("--out", default="out/cells-figures", help="folder for the figures (default out/cells-figures)")
    p.add_argument("--digits", type=int, default=64, help="evenly spaced test digits for the curves (default 64)")
    p.add_argument("--steps", type=int, default=200, help="steps to roll out (default 200)")
    p.add_argument("--eval-json", nargs="+", default=[], metavar="FILE",
                   help="curves from `deqnca cells eval --curves --out FILE` instead of computing them")
    p.add_argument("--canvases", type=int, default=2, help="canvases of 3 digits (default 2; 0: none)")
    p.add_argument("--seed", type=int, default=0, help="seeds the stochastic steps and the canvases")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    p.set_defaults(func=cmd_figures)
