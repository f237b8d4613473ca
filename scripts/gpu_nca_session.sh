#!/usr/bin/env bash
# One GPU call for the cellular experiments (issues 3-5). Phase 1 trains, in parallel and each for
# the same wall-time budget: the growing NCA by BPTT and by implicit differentiation, the maze
# DT-recall net and the maze DEQ; beside them the MNIST conditioning / per-cell read-out comparison.
# Phase 2 measures: grow show + measure + memory, maze eval + show. Everything lands in
# $OUT/results.tar.gz (runs with checkpoints and metrics, figures, logs). Every measurement has a
# time limit, so the whole call takes at most about BUDGET + 330 s (about BUDGET + 150 s typically).
#   OUT=/tmp/out DEVICE=cuda BUDGET=200 scripts/gpu_nca_session.sh
#   OUT=/tmp/out DEVICE=cpu QUICK=1 scripts/gpu_nca_session.sh     # plumbing check on a CPU
set -uo pipefail
OUT=${OUT:?set OUT}
DEVICE=${DEVICE:-cuda}
BUDGET=${BUDGET:-200}
R=${WORK:-/tmp/nca_session}
rm -rf "$R"; mkdir -p "$R/logs" "$OUT"
export DEQNCA_MAZE_CACHE=$R/mazes PYTHONUNBUFFERED=1
D="python3 -m deqnca.cli"
{ date -u; nvidia-smi -L 2>/dev/null; python3 -c "import sys, torch; print(sys.version, torch.__version__)"; } \
  > "$R/logs/env.txt" 2>&1
if [ -n "${QUICK:-}" ]; then
  TRAIN_MAZES=512; MAZE_EVAL="--sizes 9 13 --limit-per-size 16 --aa-count 4"; SHOW_SIZE=13
  MEM="--horizons 8 16"; MNIST="--train-subset 128 --test-limit 100 --rollout-steps 5 --canvases 4"
  GROW_EXTRA="--pool-size 32"; MEASURE="--samples 2"
else
  TRAIN_MAZES=50000; MAZE_EVAL="--aa-count 20 --limit-per-size 9=1000,13=1000,19=1000,33=300,59=100,101=30,201=10"; SHOW_SIZE=201
  MEM=""; MNIST="--train-subset 20000 --test-limit 2000 --rollout-steps 100 --canvases 100"
  GROW_EXTRA=""; MEASURE=""
fi
stamp() { echo "$(date -u +%T) $*" >> "$R/logs/timeline.txt"; }

stamp start
$D maze generate --sizes 9 --count $TRAIN_MAZES --split train > "$R/logs/maze_generate.log" 2>&1
stamp data

# ---- phase 1: trainings, same budget, in parallel -------------------------------------------------
for t in bptt implicit; do
  $D grow train --trainer $t --target lizard --variant regenerating --steps 8000 --time-budget "$BUDGET" \
    --device "$DEVICE" --out "$R/runs/grow-$t" $GROW_EXTRA > "$R/logs/grow-train-$t.log" 2>&1 &
done
# the DEQ twice: as tuned for accuracy, and with the fixed-point penalty that makes it converge
for m in dt deq deq-res; do
  extra=""; [ $m = deq-res ] && extra="--residual-weight 1"
  $D maze train --model ${m%-res} --width 32 --batch-size 128 --lr 2e-3 --time-budget "$BUDGET" \
    --train-count $TRAIN_MAZES $extra --device "$DEVICE" --out "$R/runs/maze-$m" > "$R/logs/maze-train-$m.log" 2>&1 &
done
timeout $((BUDGET + 240)) python3 scripts/conditioning_readout.py --device "$DEVICE" --variants cell,additive,injection $MNIST \
  --out "$R/conditioning" > "$R/logs/conditioning.log" 2>&1 &
MNIST_PID=$!
wait $(jobs -p | grep -v "^$MNIST_PID$")
stamp trained

# ---- phase 2: measurements --------------------------------------------------------------------
(
  for t in bptt implicit; do
    timeout 60 $D grow show "$R/runs/grow-$t/last" --device "$DEVICE" --out "$R/grow-show/$t" > "$R/logs/grow-show-$t.log" 2>&1
  done
  timeout 90 $D grow measure "$R/runs/grow-bptt/last" "$R/runs/grow-implicit/last" --device "$DEVICE" $MEASURE \
    --out "$R/grow-measure" --json > "$R/logs/grow-measure.json" 2> "$R/logs/grow-measure.err"
  stamp grow-measured
  timeout 150 python3 benchmarks/grow_memory.py --device "$DEVICE" $MEM --out "$R/grow-memory-gpu.json" \
    > "$R/logs/grow-memory.log" 2>&1
  stamp grow-memory
) &
(
  timeout 200 $D maze eval "$R/runs/maze-dt/last" "$R/runs/maze-deq/last" "$R/runs/maze-deq-res/last" $MAZE_EVAL --device "$DEVICE" \
    --out "$R/maze-eval" --json > "$R/logs/maze-eval.json" 2> "$R/logs/maze-eval.err"
  stamp maze-evaluated
  for m in deq deq-res dt; do
    timeout 60 $D maze show "$R/runs/maze-$m/last" --size $SHOW_SIZE --device "$DEVICE" --out "$R/maze-show/$m" \
      > "$R/logs/maze-show-$m.log" 2>&1
  done
  stamp maze-shown
) &
wait
stamp done
find "$R" -name "*.tmp" -delete
tar -C "$R" --exclude=mazes --exclude=pool.safetensors -czf "$OUT/results.tar.gz" .
ls -la "$OUT"
cat "$R/logs/timeline.txt"
