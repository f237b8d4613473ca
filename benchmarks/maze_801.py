"""Large mazes solved exactly by the wavefront solver (tasks/maze/wavefront.py), one maze at a time, one thread.

    PYTHONPATH=src python benchmarks/maze_801.py --mazes 2 --model trace-hand --json trace_hand_801.json
    PYTHONPATH=src python benchmarks/maze_801.py --mazes 2 --model maze/geodesic --json geodesic_801.json
    PYTHONPATH=src python benchmarks/maze_801.py --size 59 --mazes 2 --model trace-hand --picard

Reads (or generates and caches) the first test mazes of each maze spec (`--generators`, default dfs), solves
each from the test-time state (zeros) to its fixed point and checks it independently: one dense step of the rule
from the solution changes nothing (torch.equal). Prints per maze the seconds (wall, and CPU time of this
process: what one core spent, the honest number on a shared machine), the Picard steps the solver replaced, and
whether the model's answer is right; `--picard` also times `fixed_point` (check_every=8, as `maze eval` ran it)
to the same state, bit for bit (hours at 801x801). `--model`: a maze checkpoint or shipped name (geodesic or
trace), or "trace-hand", an untrained trace model with hand-set emitters (flood 0 at the start's colour, flood 1
at the goal's, equal costs), whose trace (0, 1) must mark exactly the BFS shortest path (checked:
"trace_is_path"). The JSON goes to results/mazes/ (a bare file name) or to the path given.
"""
from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch


def _machine() -> str:
    import os
    import platform
    info = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in info.read_text().splitlines()
             if line.startswith("model name")] if info.exists() else []
    return f"{names[0] if names else platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def hand_set_trace_model():
    """The trace model with flood 0 emitted at the start (green), flood 1 at the goal (red), equal costs."""
    from deqnca.tasks.maze.config import PRESETS
    from deqnca.tasks.maze.model import MazeSolverNet
    from deqnca.tasks.maze.trace import emit_at_start_and_goal

    model = MazeSolverNet(PRESETS.build("trace").model).eval()
    emit_at_start_and_goal(model.rule)
    return model


def picture(x, pred, target, path: Path, factor: int) -> None:
    """The maze with the model's path in blue, pixels it marked wrongly in red and missed ones in magenta, start
    green, goal red; shrunk `factor` times (each output pixel: the mean of a factor x factor block), as a PNG."""
    from PIL import Image

    img = x[0].permute(1, 2, 0).clone()
    img[pred & target] = torch.tensor([0.15, 0.35, 0.95])
    img[pred & ~target] = torch.tensor([0.95, 0.1, 0.1])
    img[~pred & target] = torch.tensor([0.9, 0.0, 0.9])
    ends = (x[0, 1] > 0.5) & (x[0, 0] < 0.5) | (x[0, 0] > 0.5) & (x[0, 1] < 0.5)      # start or goal colour
    img[ends] = x[0].permute(1, 2, 0)[ends]
    small = torch.nn.functional.avg_pool2d(img.permute(2, 0, 1)[None], factor)[0].permute(1, 2, 0)
    Image.fromarray((small * 255).round().to(torch.uint8).numpy()).save(path)


def solve_one(model, layout, picard: bool, hand_set: bool = False, picture_to: Path | None = None) -> dict:
    from deqnca.core.solvers import get_solver
    from deqnca.tasks.maze import generate as mazes
    from deqnca.tasks.maze.evaluate import default_max_iters
    from deqnca.tasks.maze.model import eval_solver_kw, predict

    x, y = mazes.to_images(layout[None])
    size = layout.shape[-1] - 2
    cap, tol = default_max_iters(size, model), model.config.tol
    wall, cpu = time.perf_counter(), time.process_time()
    f = model.step_map(x)
    z, stats = get_solver("wavefront")(f, model.inference_state(x), cap, tol=tol)
    row = {"seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu,
           "picard_steps": stats.nstep, "grid": list(z.shape[-2:]), "channels": z.shape[1]}
    with torch.no_grad():
        pred = predict(model.head(z), x)
        row["seconds_with_readout"] = time.perf_counter() - wall      # the whole answer: solve and read-out
        row["cpu_seconds_with_readout"] = time.process_time() - cpu
        row["exact_fixed_point"] = torch.equal(f(z), z)            # one dense step changes nothing
        row["solved"] = bool((pred == y.bool()).all())
    if picture_to is not None:
        picture(x, pred[0], y[0].bool(), picture_to, factor=2)
    if hand_set:
        row["trace_is_path"] = torch.equal(z[0, 4] > 0, torch.as_tensor(layout & mazes.ON_PATH) > 0)
    row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024    # the process's, so far
    if picard:
        wall = time.perf_counter()
        zp, sp = get_solver("fixed_point")(f, model.inference_state(x), cap, tol=tol, **eval_solver_kw(model))
        row.update(picard_seconds=time.perf_counter() - wall, picard_same_state=torch.equal(zp, z),
                   picard_nstep=sp.nstep)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=801)
    ap.add_argument("--mazes", type=int, default=2)
    ap.add_argument("--model", default="trace-hand", help="trace-hand, or a maze checkpoint / shipped name")
    ap.add_argument("--picard", action="store_true", help="also time fixed_point (small sizes)")
    ap.add_argument("--json", help="file name in results/mazes/, or a path")
    ap.add_argument("--pictures", help="folder for a PNG of each solved maze (shrunk 2x)")
    ap.add_argument("--generators", nargs="+", default=["dfs"], help="maze specs (deqnca.tasks.maze.loops), "
                    "--mazes test mazes of each")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    from deqnca import load
    from deqnca.engine.hardware import fix_mmap_threshold
    from deqnca.tasks.maze import generate as mazes

    fix_mmap_threshold()            # long Picard solves fragment the heap otherwise (docs/mazes.md)
    model = hand_set_trace_model() if a.model == "trace-hand" else load(a.model, kind="maze")[0]
    rows = []
    for spec in a.generators:
        t = time.perf_counter()
        layouts = torch.as_tensor(mazes.load_set(a.size, a.mazes, "test", generator=spec))
        made = time.perf_counter() - t
        for i, layout in enumerate(layouts):
            shot = None
            if a.pictures:
                Path(a.pictures).mkdir(parents=True, exist_ok=True)
                shot = Path(a.pictures) / f"{Path(a.model).name}-{a.size}-{spec}-{i}.png"
            r = solve_one(model, layout, a.picard, hand_set=a.model == "trace-hand", picture_to=shot)
            rows.append({"generator": spec, "index": i, **r})
            extra = "".join(f"  {k} {r[k]}" for k in ("trace_is_path", "picard_seconds", "picard_same_state")
                            if k in r)
            print(f"{a.size}x{a.size} {spec} maze {i}: {r['seconds']:.2f} s solve, {r['seconds_with_readout']:.2f} s "
                  f"with the read-out (cpu {r['cpu_seconds_with_readout']:.2f} s), {r['picard_steps']} Picard steps "
                  f"replaced, exact fixed point {r['exact_fixed_point']}, solved {r['solved']}{extra}", flush=True)
        print(f"({spec}: {a.mazes} mazes generated or read from the cache in {made:.0f} s)", flush=True)
    ok = all(r["exact_fixed_point"] and r.get("picard_same_state", True) for r in rows)
    if a.json:
        out = Path(a.json) if "/" in a.json else Path("results/mazes") / a.json
        out.parent.mkdir(parents=True, exist_ok=True)
        record = {"model": a.model, "size": a.size, "mazes": a.mazes, "generators": a.generators, "threads": 1,
                  "solver": "wavefront", "rows": rows, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
                  "command": f"python benchmarks/maze_801.py --size {a.size} --mazes {a.mazes} --model {a.model}"
                             + f" --generators {' '.join(a.generators)}" + (" --picard" if a.picard else ""),
                  "machine": _machine()}
        out.write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
