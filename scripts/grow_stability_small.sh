#!/usr/bin/env bash
# The equilibrium trainer's stability tools on the small target (24×24), against BPTT, on a CPU:
# 600 steps of the persistent variant each (BPTT's run was stopped at 420), then `deqnca grow measure`
# (replays of the stochastic rule from one seed cell). docs/grow.md, "Stability tools on the small target".
#   OUT=/tmp/grow-small scripts/grow_stability_small.sh        # ~10 min per run on one core
#   JOBS=3 runs three at a time (one thread each); NAMES="growspec1 grownoise" runs only those
set -uo pipefail
OUT=${OUT:-/tmp/grow-small}
STEPS=${STEPS:-600}
JOBS=${JOBS:-2}
mkdir -p "$OUT"
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
D="python3 -m deqnca.cli"
declare -A RUN=(
  [bptt]="--trainer bptt --steps 420"
  [base]="--trainer implicit"
  [spec1]="--trainer implicit --spectral-weight 1"
  [spec01]="--trainer implicit --spectral-weight 0.1"
  [noise005]="--trainer implicit --restart-noise 0.05"
  [both]="--trainer implicit --restart-noise 0.05 --spectral-weight 1"
  [seeds4]="--trainer implicit --seeds 4"
  [seeds4spec]="--trainer implicit --seeds 4 --spectral-weight 1 --spectral-target 0.98"
  [growing]="--trainer implicit --variant growing"
  [growspec1]="--trainer implicit --variant growing --spectral-weight 1"
  [grownoise]="--trainer implicit --variant growing --restart-noise 0.05"
  [growspecres]="--trainer implicit --variant growing --spectral-weight 1 --residual-weight 100"
  [growallres]="--trainer implicit --variant growing --restart-noise 0.05 --spectral-weight 1 --residual-weight 100"
  # growth from the seed every batch, for a random 64..640 steps: the equilibrium trainer's memory does
  # not depend on the rollout length, so long horizons (what the pool gives BPTT) cost only forward time
  [longspec]="--trainer implicit --variant growing --rollout-steps 64 640 --spectral-weight 1"
  [longnoise]="--trainer implicit --variant growing --rollout-steps 64 640 --restart-noise 0.05"
  [midspec]="--trainer implicit --variant growing --rollout-steps 64 192 --spectral-weight 1"
  [midnoise]="--trainer implicit --variant growing --rollout-steps 64 192 --restart-noise 0.05"
  [midboth]="--trainer implicit --variant growing --rollout-steps 64 192 --restart-noise 0.05 --spectral-weight 1"
  # the pool, with a phantom gradient through the last 32 steps instead of 8 (memory still flat in T)
  [spec1k32]="--trainer implicit --spectral-weight 1 --phantom-k 32"
  # the alive mask with a straight-through sigmoid gradient: dead cells next to the pattern get one
  [spec1surr]="--trainer implicit --spectral-weight 1 --alive-surrogate 0.05"
  [growspecsurr]="--trainer implicit --variant growing --spectral-weight 1 --alive-surrogate 0.05"
  # the windowed recipe (`--recipe window`, docs/grow.md) and variations: the pool supplies the horizon, a
  # short phantom window sees growth — 1..16 undifferentiated steps and one solver step per visit, then k
  # differentiated steps from wherever the state is (mid-growth for young samples, the pattern for old
  # ones); a 128-state pool ages samples ~8x faster. First with the expected map, then the stochastic rule
  [short8]="--trainer implicit --recipe window --phantom-map expected --phantom-k 8"
  [short16]="--trainer implicit --recipe window --phantom-map expected --phantom-k 16"
  [short16x]="--trainer implicit --recipe window --phantom-map expected --phantom-k 16 --steps 2000"
  [short32x]="--trainer implicit --recipe window --phantom-map expected --steps 2000"
  [short32s]="--trainer implicit --recipe window --steps 2000"
)
# second stage of the paper's curriculum: start from a growing-variant run's weights, train persistent
declare -A STAGED=(
  [stagedspec]="growspec1 --trainer implicit --spectral-weight 1"
  [stagednoise]="grownoise --trainer implicit --restart-noise 0.05"
  # the second stage keeps growing from the seed, over rollouts up to 640 steps that ask it to stop
  [stagedlong]="growspec1 --trainer implicit --variant growing --rollout-steps 64 640 --spectral-weight 1"
  [stagedmid]="growspec1 --trainer implicit --variant growing --rollout-steps 64 192 --spectral-weight 1"
  [stagedlonglr]="growspec1 --trainer implicit --variant growing --rollout-steps 64 640 --spectral-weight 1 --lr 2e-4"
)
NAMES=${NAMES:-bptt base spec1 spec01 noise005 both seeds4 seeds4spec growing growspec1 grownoise growspecres growallres stagedspec stagednoise}
launch() {  # name, extra args
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do sleep 5; done
  # --variant persistent first: a run's own --variant (growing) overrides it
  $D grow train --target small --variant persistent --steps "$STEPS" "${@:2}" --device cpu \
    --log-every 20 --json --out "$OUT/$1" > "$OUT/$1.log" 2>&1 &
}
for name in $NAMES; do [ -n "${RUN[$name]:-}" ] && launch "$name" ${RUN[$name]}; done
wait
for name in $NAMES; do
  [ -z "${STAGED[$name]:-}" ] && continue
  set -- ${STAGED[$name]}
  launch "$name" "${@:2}" --init-from "$OUT/$1/last"
done
wait
# replayed over the same 96 steps (960 for persistence) whatever the run's rollout range
$D grow measure $(for n in $NAMES; do echo "$OUT/$n/last"; done) --horizon 96 --device cpu --out "$OUT/measure"
