"""The NCA view of the shipped models: Figure 1 (a rollout from noise), Figure 2 (crops), and
test-time compute (accuracy against rollout steps and solver budget). Each function returns plain
data; `reports/report.py` draws and assembles them.
"""
from __future__ import annotations

import torch

from deqnca.core.nca import ANCHORS, crop, even_frames, rollout, rollout_curve
from deqnca.tasks.mnist.evaluate import evaluate

FRACTIONS = (0.25, 0.5, 0.75, 1.0)


MAX_GIF_FRAMES = 200       # a rollout of any length keeps at most this many states for its GIF


def figure1_data(model, x, steps: int = 64, seed: int = 0, frames=None):
    """One rollout from noise (x: a single image batch (1, 1, H, W)), keeping the states at `frames`
    (default: every step)."""
    gen = torch.Generator(device=x.device).manual_seed(seed)
    return rollout(model, x, steps, generator=gen, keep_states=True, frames=frames)


def draw_figure1(model, x, label: int, out, stem: str, title: str, steps: int = 64, seed: int = 0):
    """Figure 1 for one image x (1, 1, H, W): (rollout, [frames.png, .gif, curves.png]).

    Memory does not grow with `steps`: the rollout keeps the states of at most MAX_GIF_FRAMES evenly
    spaced steps (every step of a shorter one) plus those the frame strip shows; the curves keep a few
    numbers per step."""
    from deqnca.viz import figures
    from deqnca.viz.project import Projection

    strip = figures.default_steps(steps)
    gif_steps = even_frames(steps, MAX_GIF_FRAMES)
    r = figure1_data(model, x, steps=steps, seed=seed, frames=sorted(set(gif_steps) | set(strip)))
    states = r.states[0]
    proj = Projection.fit(states[-8:])     # fitted once on the last states: colours fixed across frames
    img = x[0, 0].cpu().numpy()
    if len(r.frame_steps) == steps + 1:    # every step kept: the index of a state is its step
        strip_png = figures.frame_strip(states, proj, out / f"{stem}-frames.png", image=img, title=title)
        gif_states = states
    else:
        at = {t: i for i, t in enumerate(r.frame_steps)}
        panels = [img] + [proj.to_rgb(states[at[t]].numpy()) for t in strip]
        strip_png = figures.image_grid(panels, out / f"{stem}-frames.png", titles=["input"] + [f"t={t}" for t in strip],
                                       ncols=len(panels))
        gif_states = states[[at[t] for t in gif_steps]]
    files = [strip_png,
             figures.save_gif(gif_states, proj, out / f"{stem}.gif", image=img),
             figures.rollout_curves(r.rel_residual[0], r.probs[0], out / f"{stem}-curves.png", label=label,
                                    title=title)]
    return r, files


def crop_accuracy(model, x, y, fractions=FRACTIONS, anchors=ANCHORS, batch_size=50, seed=0,
                  mode: str = "own-size") -> dict:
    """{anchor: [accuracy at each visible fraction]}.

    mode "own-size": the model sees only the crop, as a smaller image (any size works);
    mode "padded": the crop at its original position on a black 28×28 canvas (what a fixed-size CNN needs).
    """
    from deqnca.tasks.cnn.model import pad_in_place

    view = (lambda a, anchor: crop(x, a, anchor)) if mode == "own-size" else \
        (lambda a, anchor: pad_in_place(x, a, anchor))
    out = {}
    for anchor in anchors:
        out[anchor] = [evaluate(model, view(a, anchor), y, batch_size=batch_size, seed=seed)["accuracy"]
                       for a in fractions]
    return {"fractions": list(fractions), "accuracy": out, "n": len(x), "mode": mode}


def solver_budgets(model, x, y, budgets=(4, 8, 16, 32, 64), solvers=("anderson", "broyden"),
                   batch_size=50, seed=0) -> dict:
    """Accuracy and median residual per solver at equal numbers of f-evaluations (tol 0: use them all)."""
    out = {}
    for solver in solvers:
        rows = []
        for b in budgets:
            ev = evaluate(model, x, y, batch_size=batch_size, seed=seed, solver=solver, max_iter=b, tol=0.0)
            rel = ev["rel_residual"]
            rows.append({"budget": b, "accuracy": ev["accuracy"], "rel_median": rel.median().item(),
                         "fallback": ev["fallback"]})
        out[solver] = rows
    return out


def test_time_compute(model, x, y, max_steps: int = 160, batch_size=50, seed=0) -> dict:
    return rollout_curve(model, x, y, max_steps, batch_size=batch_size, seed=seed)
