"""Evaluate and roll out a shipped model.

Evaluates the equilibrium-faithful MNIST model that ships with deqnca (no download) on the first test
images, then replays its rule from noise on one digit as a cellular automaton: the relative residual
‖f(z) − z‖ / ‖f(z)‖ falls step by step to the fixed point, and the answer settles. Writes the frames,
a GIF and the curves to --out.

    python examples/evaluate_and_rollout.py                  # 2,000 test images, 48 steps
    python examples/evaluate_and_rollout.py --quick          # 100 images, 20 steps (seconds)
    python examples/evaluate_and_rollout.py --model mnist-essay
"""
import argparse
from pathlib import Path

import deqnca
from deqnca.tasks.mnist.figures import draw_figure1

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--model", default="mnist-equilibrium", help="a shipped model's name or a checkpoint path")
parser.add_argument("--quick", action="store_true", help="100 images and 20 steps")
parser.add_argument("--out", default="out/examples/rollout")
args = parser.parse_args()
n, steps = (100, 20) if args.quick else (2000, 48)

model, meta = deqnca.load(args.model)                        # a shipped name works from any folder
x, y = deqnca.load_mnist(split="test")                       # the MNIST files ship with deqnca
result = deqnca.evaluate(model, x[:n], y[:n], batch_size=50)
summary = deqnca.residual_summary(result["rel_residual"])
print(f"{args.model}: {deqnca.count_parameters(model):,} parameters, accuracy {100 * result['accuracy']:.1f}% "
      f"on {n} test images, median relative residual {summary['rel_median']:.1e}, "
      f"{result['nstep_mean']:.1f} solver steps on average")

# the NCA view: the same rule, iterated step by step from noise on test image 7
r, files = draw_figure1(model, x[7:8], int(y[7]), Path(args.out), "digit-7", f"{args.model} on test image 7",
                        steps=steps)
for t in sorted({1, 2, 4, 8, 16, steps}):
    print(f"  step {t:3d}: relative residual {r.rel_residual[0, t - 1]:.1e}, "
          f"answer {int(r.probs[0, t].argmax())} (p={float(r.probs[0, t].max()):.2f})")
print("wrote", ", ".join(str(f) for f in files))
