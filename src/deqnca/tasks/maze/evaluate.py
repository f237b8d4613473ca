"""Evaluation: solved fraction against size and test-time iterations, the AA score (path
independence), residuals, time and memory per maze."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from deqnca.core.fileio import write_text_atomic
from deqnca.core.solvers import get_solver, residuals, rollout
from deqnca.tasks import load
from deqnca.tasks.maze import generate as mazes
from deqnca.tasks.maze.model import EXACT, eval_solver, eval_solver_kw, inference_iters, predict, solve_for_eval
from deqnca.tasks.maze.model_config import DEFAULT_LIMITS  # noqa: F401  (re-exported)

MAX_FAILED = 50      # failing maze indices kept per row (for pictures of failures: `deqnca maze show --index`)


def iteration_marks(max_iters: int) -> list[int]:
    """1, 2, 5, 10, 20, 30, 50, 100, ... up to max_iters (always included)."""
    marks = [m * 10 ** e for e in range(6) for m in (1, 2, 3, 5)]
    return sorted({m for m in marks if m < max_iters} | {max_iters})


def default_max_iters(size: int, model=None) -> int:
    """Test-time steps for `size`×`size` mazes (`inference_iters` of their image: enough to cross it a few
    times; for the geodesic model, the rule's guaranteed bound)."""
    return inference_iters(model, mazes.image_side(size), mazes.image_side(size))


def _batch_for(size: int, device: str) -> int:
    # pixels per batch, sized for a few live (B, width, H, W) tensors of 32-64 channels
    pixels = 4_000_000 if str(device).startswith("cuda") else 400_000
    return max(2, pixels // mazes.image_side(size) ** 2)


def start_regions(layouts) -> torch.Tensor:
    """(B, H, W) bool image masks of the open pixels the start reaches (percolation mazes have others), drawn
    as `to_images` draws layouts: a path marked outside them is wrong whatever the target says."""
    from deqnca.tasks.maze.loops import bfs_batch

    lay = np.asarray(layouts)
    b, side = lay.shape[0], lay.shape[1]
    open_ = (lay & mazes.KIND_MASK) != mazes.WALL
    base = np.arange(b) * side * side
    start = np.argmax(((lay & mazes.KIND_MASK) == mazes.START).reshape(b, -1), axis=1)
    # the target is a corner, a wall no BFS reaches: every grid runs until its region is exhausted
    dist, _ = bfs_batch(open_.ravel(), base + start, base, side)
    region = torch.as_tensor(dist.reshape(b, side, side) >= 0)
    return F.pad(region.repeat_interleave(2, 1).repeat_interleave(2, 2), (1, 1, 1, 1))


def _sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def evaluate_size(model, layouts, max_iters: int, device="cpu", aa_count: int = 50, batch: int | None = None,
                  curve: bool = True, solver: str | None = None):
    """Accuracy (every pixel right) vs iterations, AA score, residuals, time and memory per maze. `curve` False:
    the read-out only at the end (the fixed point, or DT's last step), not at every mark on the way. `solver`:
    the test-time solver (`eval_solver`: by default the wavefront for the geodesic and trace models, whose
    states, step counts and curve are Picard's, and fixed_point for the DEQ)."""
    model.eval()
    solver = eval_solver(model, solver)
    marks = iteration_marks(max_iters) if curve else [max_iters]
    size = layouts.shape[1] - 2
    batch = batch or _batch_for(size, device)
    solved_at = torch.zeros(len(marks), dtype=torch.long)
    cos_all, rel_all, steps_all = [], [], []
    # indices (in `layouts`) of mazes wrong at the last mark; their wrong pixels; mazes marked where start cannot reach
    failed, failed_px, outside = [], [], 0
    seconds = 0.0
    if str(device).startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
    is_dt = model.config.model == "dt"
    for i in range(0, len(layouts), batch):
        x, y = mazes.to_images(torch.as_tensor(layouts[i:i + batch]).to(device))
        _sync(device)
        t = time.perf_counter()
        f = model.step_map(x)
        z = model.inference_state(x)
        done_at = torch.full((len(x),), max_iters)
        prev = 0
        for j, m in enumerate(marks):
            if is_dt:
                z, _ = rollout(f, z, m - prev, measure=False)
            else:
                z, st = get_solver(solver)(f, z, max_iter=m - prev, tol=model.config.tol, **eval_solver_kw(model))
                converged = (st.rel_residual < model.config.tol).cpu()
                # the iteration each maze first reached tol (not the mark after it): iterations against size
                met = prev + st.sample_steps.cpu().clamp(min=1)
                done_at = torch.where(converged & (done_at == max_iters), met, done_at)
            prev = m
            pred = predict(model.head(z), x)
            right = (pred == y.bool()).flatten(1)
            ok = right.all(1)
            solved_at[j] += int(ok.sum())
            if not is_dt and bool((done_at < max_iters).all()):
                solved_at[j + 1:] += int(ok.sum())      # converged: the answer can no longer change
                break
        bad = torch.nonzero(~ok.cpu()).flatten().tolist()
        failed += [i + k for k in bad]
        failed_px += (~right[bad]).sum(1).tolist()
        outside += int((pred & ~start_regions(layouts[i:i + batch]).to(pred.device)).flatten(1).any(1).sum())
        _sync(device)
        seconds += time.perf_counter() - t
        fz = f(z)
        rel_all.append(residuals(fz, z)[1].float().cpu())
        steps_all.append(done_at if not is_dt else torch.full((len(x),), max_iters))
        n_aa = min(len(x), aa_count - sum(len(c) for c in cos_all))
        if n_aa >= 2:
            # asymptotic alignment: solve maze a again, now starting from maze a+1's final state
            z_other = torch.roll(z[:n_aa], 1, dims=0)
            z2, _ = solve_for_eval(model, x[:n_aa], max_iters, z0=z_other, solver=solver)
            # in float64: over ~10^5-10^6 entries a float32 cosine is off by ~1e-5 even for identical states
            cos_all.append(F.cosine_similarity(z[:n_aa].flatten(1).double(), z2.flatten(1).double(), dim=1).cpu())
    n = len(layouts)
    rel = torch.cat(rel_all)
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 20 if str(device).startswith("cuda") else None
    curve = (solved_at.double() / n).tolist()
    best = max(range(len(marks)), key=lambda j: curve[j])
    return {
        "size": size, "image_px": mazes.image_side(size), "n": n, "max_iters": max_iters,
        "solver": "rollout" if is_dt else solver,
        "accuracy": curve[-1], "best_accuracy": curve[best], "best_iters": marks[best],
        "curve_iters": marks, "curve_accuracy": curve,
        "aa_score": torch.cat(cos_all).mean().item() if cos_all else None,     # float64
        "aa_n": sum(len(c) for c in cos_all),
        "mean_iters": torch.cat(steps_all).double().mean().item(), "most_iters": int(torch.cat(steps_all).max()),
        "rel_residual_median": rel.median().item(), "converged_frac": (rel < model.config.tol).double().mean().item(),
        "ms_per_maze": 1000 * seconds / n, "batch": batch,
        "failed": failed[:MAX_FAILED], "failed_pixels": failed_px[:MAX_FAILED], "n_failed": len(failed),
        "marked_outside": outside,
        "peak_mb_per_batch": peak, "peak_mb_per_maze": peak / batch if peak is not None else None,
    }


def parse_size_map(text: str | None, sizes, default: dict | None = None) -> dict:
    """"9=1000,59=200" or a single number for every size -> {size: int}."""
    out = {s: (default or {}).get(s) for s in sizes}
    if not text:
        return out
    try:
        if "=" not in text:
            return {s: int(text) for s in sizes}
        for part in text.split(","):
            k, _, v = part.partition("=")
            out[int(k)] = int(v)
    except ValueError:
        raise ValueError(f"{text!r}: expected one number or SIZE=N pairs separated by commas, e.g. "
                         "9=1000,201=20") from None
    return out


def evaluate_checkpoints(paths, sizes, limits, max_iters, device, out, aa_count=50, cache=None, log=print,
                         generators=(mazes.DEFAULT_GENERATOR,), compile: bool = False,
                         readout_symmetry: str | None = None, curve: bool = True, first: int = 0,
                         solver: str | None = None) -> dict:
    """Every checkpoint on every size of every maze distribution in `generators`; `max_iters` {size: cap or
    None}, None meaning the model's `default_max_iters`.

    eval.json holds, per checkpoint, "by_generator" {generator: {size: row}} and "sizes", the rows of
    the first generator (the depth-first benchmark by default, as before there were others). `readout_symmetry`
    (geodesic models) overrides the checkpoint's read-out symmetrisation (None: keep it). `first` skips the first
    mazes of every set (mazes first .. first + limit − 1: an evaluation extended in parts); `failed` holds indices
    in the whole set. `solver`: the test-time solver of the geodesic and trace models (`eval_solver`)."""
    from deqnca.viz.figures import line_plot

    generators = tuple(mazes.spec_identity(g)[0] for g in generators)
    # the default (depth-first only) keeps its log lines, labels and files; any other choice names them
    named = generators != (mazes.DEFAULT_GENERATOR,)
    results = {}
    for path in paths:
        model, meta = load(path, device, kind="maze")
        if readout_symmetry is not None:
            model.set_readout_symmetry(readout_symmetry)
        compiled = compile and model.compile_for_eval()
        by_generator = {}
        for g in generators:
            rows = {}
            for s in sizes:
                lay = mazes.load_set(s, first + limits[s], "test", cache=cache, log=log, generator=g)[first:]
                r = evaluate_size(model, lay, max_iters.get(s) or default_max_iters(s, model), device, aa_count,
                                  curve=curve, solver=solver if model.config.model in EXACT else None)
                r["compiled"] = compiled
                r["readout_symmetry"] = model.config.readout_symmetry
                r["first"], r["failed"] = first, [first + i for i in r["failed"]]
                rows[s] = r
                aa = f"{r['aa_score']:.4f}" if r["aa_score"] is not None else "n/a"
                mem = f"{r['peak_mb_per_maze']:.1f} MB" if r["peak_mb_per_maze"] is not None else "n/a (CPU)"
                log(f"{Path(path).name} [{model.config.model}] {s}x{s}{f' {g}' if named else ''}: solved "
                    f"{100 * r['accuracy']:.1f}% of {r['n']} (best {100 * r['best_accuracy']:.1f}% at "
                    f"{r['best_iters']} it), AA {aa}, {r['mean_iters']:.0f} it, {r['ms_per_maze']:.1f} ms/maze, "
                    f"peak {mem}, {r['marked_outside']} marked outside the start's region")
            by_generator[g] = rows
        results[str(path)] = {"model": model.config.model, "width": model.config.width,
                              "sizes": by_generator[generators[0]], "by_generator": by_generator}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    label = {p: f"{r['model']} ({Path(p).parent.name or Path(p).name})" for p, r in results.items()}
    curves = [(f"{label[p]}{f' {g}' if named else ''}", r["by_generator"][g])
              for p, r in results.items() for g in generators]
    line_plot(sizes, {name: [rows[s]["accuracy"] for s in sizes] for name, rows in curves},
              out / "accuracy_vs_size.png", "maze size", "fraction fully solved",
              "trained on 9x9; accuracy at the last iteration / at convergence", logx=True)
    marks = iteration_marks(max(row["max_iters"] for _, rows in curves for row in rows.values()))
    series = {}
    for name, rows in curves:
        for s in sizes:
            row = rows[s]
            lookup = dict(zip(row["curve_iters"], row["curve_accuracy"]))
            # beyond a size's own max_iters (or after convergence) the answer is frozen at its last value
            series[f"{name} {s}x{s}"] = [lookup.get(m, row["accuracy"] if m > row["max_iters"] else None)
                                         for m in marks]
    line_plot(marks, series, out / "accuracy_vs_iters.png", "test-time iterations", "fraction fully solved",
              "accuracy vs test-time compute", logx=True)
    write_text_atomic(out / "eval.json", json.dumps(results, indent=1) + "\n")
    if named:
        write_text_atomic(out / "accuracy_by_generator.md", accuracy_table(results, sizes) + "\n")
    return results


def accuracy_table(results: dict, sizes) -> str:
    """Markdown: one row per checkpoint and maze distribution, solved % (and AA) per size."""
    rows = ["| model | generator | " + " | ".join(f"{s}×{s}" for s in sizes) + " |",
            "|---|---|" + "---|" * len(sizes)]
    for p, r in results.items():
        for g, by_size in r["by_generator"].items():
            cells = []
            for s in sizes:
                row = by_size[s]
                aa = f", AA {row['aa_score']:.3f}" if row["aa_score"] is not None else ""
                cells.append(f"{100 * row['accuracy']:.1f}% of {row['n']}{aa}")
            rows.append(f"| {r['model']} ({Path(p).parent.name or Path(p).name}) | {g} | " + " | ".join(cells) + " |")
    return "\n".join(rows)
