"""One consensus model's weights under each flood: the largest or the second-largest neighbour (`confirm` 1 or 2),
over the 3×3 or the 5×5 (`reach` 1 or 2), scored at the fixed point without retraining.

    python scripts/cells_flood_variants.py cells/consensus --digits 256

Every variant reads the same weights; the fixed point is solved by blocks (`ConsensusCellsRule.equilibrium`:
z by Picard to 1e-4, then the exact flood) on the first `--digits` test digits. It prints each variant's cell
accuracy, total agreement and flood steps — what a flood costs in accuracy before any training adapts to it.
"""
from __future__ import annotations

import argparse
import time

import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", help="a consensus model: a run's checkpoint or a shipped name")
    ap.add_argument("--digits", type=int, default=256, help="the first N test digits")
    ap.add_argument("--batch-size", type=int, default=128)
    a = ap.parse_args(argv)
    from deqnca import load
    from deqnca.tasks.cells.model import CellsModel, evaluate_solved, truth_map
    from deqnca.tasks.cells.task import load_digits

    torch.set_num_threads(1)
    source, _ = load(a.checkpoint, kind="cells")
    if source.config.rule != "selfclass_consensus":
        raise SystemExit(f"{a.checkpoint}: a {source.config.rule} model; this compares the consensus rule's floods")
    _, _, x, y = load_digits(28, 1, a.digits)
    truth = truth_map(x, y)
    print(f"{a.checkpoint} on the first {len(x)} test digits, at the fixed point (one thread)")
    for confirm, reach in ((1, 1), (2, 1), (1, 2), (2, 2)):
        model = CellsModel({"rule": "selfclass_consensus",
                            "rule_kw": {**source.config.rule_kw, "confirm": confirm, "reach": reach}})
        model.rule.load_state_dict(source.rule.state_dict())
        model.eval()
        t = time.time()
        r = evaluate_solved(model, x, truth, solver="fixed_point", max_iter=120, tol=1e-4, batch_size=a.batch_size)
        print(f"  confirm {confirm}, reach {reach}: cell accuracy {r['accuracy']:.2%}, agreement {r['agreement']:.2%}, "
              f"{r['nstep']:.0f} solver + flood steps, {time.time() - t:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
