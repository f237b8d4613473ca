#!/usr/bin/env bash
# Evaluate every shipped model the same way with two source trees and say whether the results are the same
# (timings aside): how the one-model redesign was checked against the code before it.
#   git worktree add /tmp/before c5ee0c2 && scripts/compare_shipped_evaluations.sh /tmp/before/src src
set -u
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-/tmp/compare-evaluations}
export OMP_NUM_THREADS=1 DEQNCA_MAZE_CACHE=$OUT/mazes
for side in "before:$1" "after:$2"; do
  name=${side%%:*}; src=$(cd "${side#*:}" && pwd); out=$OUT/$name; mkdir -p "$out"
  run() { PYTHONPATH=$src $PY -m deqnca.cli "$@"; }
  for m in mnist-essay mnist-equilibrium mnist-cell; do run eval $m --limit 500 --json --device cpu > "$out/eval-$m.json"; done
  run maze eval maze/geodesic maze/geodesic-mix maze/dt maze/deq maze/deq-res maze/dt-5to13 --sizes 9 \
    --limit-per-size 50 --aa-count 5 --json --device cpu --out "$out/maze" > "$out/maze.json"
  for m in consensus article equilibrium; do
    run cells eval cells/$m --images 50 --marks 20,200 --json --device cpu > "$out/cells-$m.json"
  done
  run grow measure grow/lizard-equilibrium grow/lizard-bptt grow/lizard-equilibrium-fixed-point --samples 2 --json \
    --device cpu > "$out/grow.json"
done 2>/dev/null
$PY - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
def strip(o):      # timings and paths differ from run to run; every measured number must not
    if isinstance(o, dict):
        return {k: strip(v) for k, v in o.items() if k not in ("seconds", "ms_per_maze", "checkpoint")
                and not k.endswith("_s")}
    return [strip(v) for v in o] if isinstance(o, list) else o
bad = 0
for f in sorted((out / "before").glob("*.json")):
    same = strip(json.loads(f.read_text())) == strip(json.loads((out / "after" / f.name).read_text()))
    bad += not same
    print(f"{f.name:32s} {'identical' if same else 'DIFFERS'}")
sys.exit(1 if bad else 0)
PY
