#!/usr/bin/env bash
# The MNIST numbers of docs/mnist.md and docs/speed.md in one GPU call:
#  1. the CUDA-only tests (captured training step == eager step);
#  2. alone on the GPU: benchmarks/mnist_speed.py — plain TorchDeq (the essay's Broyden, and 16 fixed-point
#     steps, the nearest TorchDeq configuration that trains) vs deqnca per epoch, and complete
#     timed 10-epoch trainings of both presets (seed 0, kept as run folders);
#  3. seeds 1 and 2 of both presets, side by side (accuracies; their times are shared-GPU times).
# Stops everything at DEADLINE seconds after the start; finished epochs survive (atomic checkpoints).
#   OUT=/tmp/out scripts/gpu_mnist_session.sh
#   OUT=/tmp/out PRESETS=equilibrium scripts/gpu_mnist_session.sh   # one preset (+ the baseline)
#   OUT=/tmp/out PRESETS="equilibrium equilibrium-fixed" scripts/gpu_mnist_session.sh
#       # the fixed-length equilibrium step, eager and captured as a CUDA graph (docs/speed.md)
#   OUT=/tmp/out DEVICE=cpu QUICK=1 scripts/gpu_mnist_session.sh     # plumbing check on a CPU
set -uo pipefail
OUT=${OUT:?set OUT}
DEVICE=${DEVICE:-cuda}
DEADLINE=${DEADLINE:-540}
PRESETS=${PRESETS:-essay equilibrium}
R=${WORK:-/tmp/mnist_session}
T0=$(date +%s)
left() { echo $(( DEADLINE - ($(date +%s) - T0) )); }
rm -rf "$R"; mkdir -p "$R/logs" "$R/runs" "$OUT"
export PYTHONUNBUFFERED=1
{ date -u; nvidia-smi -L 2>/dev/null; python3 -c "import sys, torch; print(sys.version, torch.__version__)"; } \
  > "$R/logs/env.txt" 2>&1
pack() { find "$R" -name "*.tmp" -delete; tar -C "$R" -czf "$OUT/mnist_session.tar.gz" logs runs; }
trap pack EXIT
BENCH="--batches 100 --infer-limit 10000"; TRAIN=""
[ -n "${QUICK:-}" ] && BENCH="--batches 2 --infer-limit 100" && TRAIN="--epochs 1 --train-subset 256 --test-subset 100"

timeout 120 python3 -m pytest -q tests/test_graphs.py tests/test_solvers.py > "$R/logs/tests_cuda.log" 2>&1
echo "tests rc=$? at $(( $(date +%s) - T0 ))s" >> "$R/logs/timeline.txt"

LIST=$(echo $PRESETS | tr ' ' ,)
TIMED=$(echo $LIST | sed 's/essay/essay,essay+graph/; s/equilibrium-fixed/equilibrium-fixed,equilibrium-fixed+graph/')
FULL="--train-full $LIST"; [ -n "${QUICK:-}" ] && FULL=""
timeout $(( $(left) - 60 )) python3 benchmarks/mnist_speed.py --device "$DEVICE" $BENCH \
  --baselines broyden,fixed16 --presets $TIMED $FULL --train-out "$R/runs" --json-out "$R/logs/bench.json" \
  > "$R/logs/bench.md" 2> "$R/logs/bench.err"
echo "bench rc=$? at $(( $(date +%s) - T0 ))s" >> "$R/logs/timeline.txt"

for preset in $PRESETS; do
  for seed in 1 2; do
    timeout $(( $(left) - 15 )) python3 -m deqnca.cli train --preset $preset --seed $seed --device "$DEVICE" \
      --out "$R/runs/$preset-s$seed" $TRAIN > "$R/logs/train-$preset-s$seed.log" 2>&1 &
  done
done
wait
echo "seeds done at $(( $(date +%s) - T0 ))s" >> "$R/logs/timeline.txt"
