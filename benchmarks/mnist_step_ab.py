"""One process's MNIST training-step times for the deqnca source on PYTHONPATH — `essay` and `equilibrium`,
batch 64 of real training images, one thread, float32, channels-last as training gives it — the step of
benchmarks/training_floor.py (`training_step`): forward, loss and backward, no update, so that every timed step
sees the same weights and noise. Run it alternately for two checkouts (before and after a change), so that
both see the same machine and load:

    git worktree add /tmp/before <commit>
    for i in 1 2 3; do
      OMP_NUM_THREADS=1 PYTHONPATH=/tmp/before/src python benchmarks/mnist_step_ab.py before 7
      OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/mnist_step_ab.py after 7
    done

Prints one JSON line: the label, whether freed memory is kept (`hardware.retain_freed_memory`, where the
checkout has it: training does it), and per preset the median seconds over the rounds (the presets interleaved)
and the median minor page faults of a step (the pages the step touched for the first time since the kernel
handed them out).
"""
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

from deqnca.engine import hardware

sys.path.insert(0, str(Path(__file__).resolve().parent))
from training_floor import training_step  # noqa: E402  (the step as training_floor.py times it)


def main(label: str, rounds: int) -> dict:
    torch.set_num_threads(1)
    retained = getattr(hardware, "retain_freed_memory", lambda: False)()
    steps = {name: training_step(name, 64, "off")[0] for name in ("essay", "equilibrium")}
    for step in steps.values():
        step()
        step()
    times, faults = {k: [] for k in steps}, {k: [] for k in steps}
    for _ in range(rounds):
        for k, fn in steps.items():
            f0, t = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
            faults[k].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    return {"code": label, "retained_freed_memory": retained, **{k: statistics.median(v) for k, v in times.items()},
            "page_faults": {k: statistics.median(v) for k, v in faults.items()}}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 7)))
