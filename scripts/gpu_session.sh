#!/usr/bin/env bash
# One GPU session: speed benchmark against plain TorchDeq, then every MNIST training run in parallel.
# Results land in $OUT (bench_gpu.md/json, runs.tar.gz, summary.json, env.txt).
#   OUT=/tmp/out DEVICE=cuda DEADLINE=420 scripts/gpu_session.sh
#   OUT=/tmp/out DEVICE=cpu DRY=1 scripts/gpu_session.sh      # plumbing check on a CPU
set -uo pipefail
OUT=${OUT:?set OUT}
DEVICE=${DEVICE:-cuda}
DEADLINE=${DEADLINE:-420}
mkdir -p "$OUT"
{ date -u; nvidia-smi -L 2>/dev/null; python3 -c "import torch, sys; print(sys.version, torch.__version__)"; } > "$OUT/env.txt"
if [ -n "${DRY:-}" ]; then BATCHES=2; LIMIT=100; EXTRA=--dry; else BATCHES=100; LIMIT=10000; EXTRA=; fi
python3 benchmarks/mnist_speed.py --device "$DEVICE" --batches $BATCHES --infer-limit $LIMIT \
  --json-out "$OUT/bench_gpu.json" > "$OUT/bench_gpu.md" 2> "$OUT/bench_gpu.err"
cat "$OUT/bench_gpu.md"
python3 scripts/mnist_campaign.py --out /tmp/campaign --pack "$OUT/runs.tar.gz" --device "$DEVICE" \
  --deadline "$DEADLINE" $EXTRA
