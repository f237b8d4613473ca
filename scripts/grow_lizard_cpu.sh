#!/usr/bin/env bash
# The lizard on a 2-core CPU: BPTT (the paper's recipe) against the equilibrium trainer's windowed
# phantom recipe, trained side by side (one thread each, the same wall-time budget, at the same time),
# then `grow show` and `grow measure` (replays over 96 steps, 960 for persistence) for each.
# docs/grow.md, "The windowed phantom gradient".
#   OUT=/tmp/grow-lizard BUDGET=2400 scripts/grow_lizard_cpu.sh
#   NAMES=window-stochastic OUT=... scripts/grow_lizard_cpu.sh        # one run only
set -uo pipefail
OUT=${OUT:-/tmp/grow-lizard}
BUDGET=${BUDGET:-2400}
VARIANT=${VARIANT:-regenerating}
mkdir -p "$OUT"
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
D="python3 -m deqnca.cli"
# `--recipe window` (its preset: src/deqnca/tasks/grow/config.py, docs/grow.md): per visit of a pool state 1..16 growth
# steps without autograd, one solver step, then 32 differentiated steps of the stochastic rule from wherever
# the state is; `window` iterates the expected map instead, the cautionary row of the docs
declare -A RUN=([bptt]="--trainer bptt" [window]="--trainer implicit --recipe window --phantom-map expected"
                [window-stochastic]="--trainer implicit --recipe window")
NAMES=${NAMES:-bptt window}
{ date -u; lscpu | grep "Model name"; python3 -c "import torch; print(torch.__version__)"; } > "$OUT/env.txt" 2>&1
for n in $NAMES; do
  $D grow train ${RUN[$n]} --target lizard --variant "$VARIANT" --time-budget "$BUDGET" --device cpu \
    --log-every 10 --json --out "$OUT/$n" > "$OUT/$n.log" 2>&1 &
done
wait
for n in $NAMES; do
  $D grow show "$OUT/$n/last" --steps 96 --device cpu --out "$OUT/show-$n" > "$OUT/show-$n.log" 2>&1 &
done
$D grow measure $(for n in $NAMES; do echo "$OUT/$n/last"; done) --horizon 96 --device cpu --out "$OUT/measure" \
  > "$OUT/measure.log" 2>&1
wait
