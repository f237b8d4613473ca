"""The geodesic maze model's test-time solve three ways, in one run, one thread.

    PYTHONPATH=src python benchmarks/geodesic_solve.py                      # maze/geodesic, 4 mazes of 59x59
    PYTHONPATH=src python benchmarks/geodesic_solve.py --size 101 --mazes 2 --json-out results/x.json

Each way solves the same depth-first test mazes from zeros to the exact fixed point (`fixed_point`, tol 1e-12):
- checked every step: the solver's default, a residual (two norms and a select) after every step;
- checked every 8 steps: `check_every=8`, what `maze eval` uses for this model (the step is cheap, the residual
  costs about twice as much);
- compiled, checked every 8: `maze eval --compile`, the step fused by torch.compile (the eager step makes ~8
  passes over the state and is memory-bound); the compile time is printed apart and not in the solve time.
All three must end in the same state bit for bit (checked). Prints seconds per maze and the ratios.
"""
from __future__ import annotations

import argparse
import json
import time

import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", nargs="?", default="maze/geodesic")
    ap.add_argument("--size", type=int, default=59)
    ap.add_argument("--mazes", type=int, default=4)
    ap.add_argument("--json-out")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    from deqnca import load
    from deqnca.core.solvers import get_solver
    from deqnca.tasks.maze import generate as mazes
    from deqnca.tasks.maze.evaluate import default_max_iters

    model, _ = load(a.checkpoint)
    x, _ = mazes.to_images(torch.as_tensor(mazes.load_set(a.size, a.mazes, "test")))
    z0, cap, tol = model.inference_state(x), default_max_iters(a.size, model), model.config.tol
    rows, states = {}, {}

    def solve(name, check_every):
        f = model.step_map(x)
        t = time.perf_counter()
        z, st = get_solver("fixed_point")(f, z0, cap, tol=tol, check_every=check_every)
        rows[name] = {"seconds_per_maze": (time.perf_counter() - t) / a.mazes, "steps": st.nstep}
        states[name] = z

    solve("checked every step", 1)
    solve("checked every 8 steps", 8)
    model.compile_for_eval()
    t = time.perf_counter()
    model.step_map(x)(z0)                       # compiles
    compile_s = time.perf_counter() - t
    solve("compiled, checked every 8", 8)
    same = all(torch.equal(states["checked every step"], z) for z in states.values())
    base = rows["checked every step"]["seconds_per_maze"]
    for name, r in rows.items():
        r["speedup"] = base / r["seconds_per_maze"]
        print(f"{name:28s} {r['seconds_per_maze']:8.3f} s per maze  {r['steps']:6d} steps  {r['speedup']:.2f}x")
    print(f"compile: {compile_s:.1f} s; the same final states bit for bit: {same}")
    if a.json_out:
        record = {"checkpoint": a.checkpoint, "size": a.size, "mazes": a.mazes, "threads": 1, "rows": rows,
                  "compile_seconds": compile_s, "same_states": same, "torch": torch.__version__,
                  "date": time.strftime("%Y-%m-%d"), "command": "python benchmarks/geodesic_solve.py "
                  f"{a.checkpoint} --size {a.size} --mazes {a.mazes}"}
        with open(a.json_out, "w") as fh:
            json.dump(record, fh, indent=1)
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
