#!/usr/bin/env bash
# The growing-NCA comparison in one GPU call: BPTT and the equilibrium trainer with its stability
# tools, trained side by side (same budget, same GPU, at the same time), then grow show + measure for
# each. Everything lands in $OUT/grow.tar.gz. RUNS picks the runs (default: all below).
#   OUT=/tmp/out DEVICE=cuda BUDGET=240 scripts/gpu_grow_session.sh
#   RUNS="bptt implicit-noise implicit-spectral" OUT=/tmp/out scripts/gpu_grow_session.sh
#   OUT=/tmp/out DEVICE=cpu BUDGET=5 QUICK=1 scripts/gpu_grow_session.sh    # plumbing check
set -uo pipefail
OUT=${OUT:?set OUT}
DEVICE=${DEVICE:-cuda}
BUDGET=${BUDGET:-240}
R=${WORK:-/tmp/grow_session}
rm -rf "$R"; mkdir -p "$R/logs" "$OUT"
export PYTHONUNBUFFERED=1
D="python3 -m deqnca.cli"
EXTRA=""; MEASURE=""
[ -n "${QUICK:-}" ] && EXTRA="--pool-size 16 --rollout-steps 8 12" && MEASURE="--samples 2"
{ date -u; nvidia-smi -L 2>/dev/null; python3 -c "import sys, torch; print(sys.version, torch.__version__)"; } \
  > "$R/logs/env.txt" 2>&1
declare -A RUN=([bptt]="--trainer bptt" [implicit]="--trainer implicit"
                [implicit-jac]="--trainer implicit --jac-weight 0.1"
                [implicit-noise]="--trainer implicit --restart-noise 0.05"
                [implicit-spectral]="--trainer implicit --spectral-weight 1"
                [implicit-noise-spectral]="--trainer implicit --restart-noise 0.05 --spectral-weight 1"
                # the windowed phantom gradient (docs/grow.md): 32 differentiated stochastic steps from
                # pool states of every age, the pool supplying the horizon
                [implicit-window]="--trainer implicit --recipe window")
# the paper's curriculum for the equilibrium trainer: half the budget growing from the seed, the other half
# regenerating from those weights (--init-from) — the most balanced recipe on the small target (docs/grow.md)
declare -A STAGED=([implicit-staged-spectral]="--trainer implicit --spectral-weight 1")
RUNS=${RUNS:-"bptt implicit-window implicit implicit-jac implicit-noise implicit-spectral implicit-noise-spectral implicit-staged-spectral"}
for name in $RUNS; do
  if [ -n "${STAGED[$name]:-}" ]; then
    ( $D grow train ${STAGED[$name]} --target lizard --variant growing --steps 8000 \
        --time-budget $(( BUDGET / 2 )) --device "$DEVICE" --out "$R/runs/grow-$name-stage1" $EXTRA \
        > "$R/logs/train-$name-stage1.log" 2>&1 &&
      $D grow train ${STAGED[$name]} --target lizard --variant regenerating --steps 8000 \
        --time-budget $(( BUDGET - BUDGET / 2 )) --init-from "$R/runs/grow-$name-stage1/last" \
        --device "$DEVICE" --out "$R/runs/grow-$name" $EXTRA > "$R/logs/train-$name.log" 2>&1 ) &
    continue
  fi
  $D grow train ${RUN[$name]} --target lizard --variant regenerating --steps 8000 --time-budget "$BUDGET" \
    --device "$DEVICE" --out "$R/runs/grow-$name" $EXTRA > "$R/logs/train-$name.log" 2>&1 &
done
wait
for name in $RUNS; do
  timeout 60 $D grow show "$R/runs/grow-$name/last" --device "$DEVICE" --out "$R/show/$name" \
    > "$R/logs/show-$name.log" 2>&1 &
done
timeout 240 $D grow measure $(for n in $RUNS; do echo "$R/runs/grow-$n/last"; done) --device "$DEVICE" $MEASURE \
  --out "$R/measure" --json > "$R/logs/measure.json" 2> "$R/logs/measure.err"
wait
find "$R" -name "*.tmp" -delete
tar -C "$R" --exclude=pool.safetensors -czf "$OUT/grow.tar.gz" .
