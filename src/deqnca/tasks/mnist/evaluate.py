"""Classification accuracy and how far from equilibrium the states are, for any `EquilibriumModel`."""
from __future__ import annotations

import torch
from tqdm import tqdm  # the text bar everywhere: tqdm.auto warns in a notebook without ipywidgets

from deqnca.core.amp import amp_context


def as_layout(x, channels_last: str, device):
    """`x` in channels-last memory when `channels_last` is "on", or "auto" on a CPU, where it is faster
    for these convolutions (docs/speed.md)."""
    use_cl = channels_last == "on" or (channels_last == "auto" and torch.device(device).type == "cpu")
    if not use_cl:
        return x
    if x.dim() == 4 and x.shape[1] == 1:
        # one channel is both layouts at once, and convolutions read that as NCHW: give it the channel
        # stride of channels-last (1), so that the encoding, and the state after it, come out channels-last
        h, w = x.shape[2:]
        return x.contiguous().as_strided(x.shape, (h * w, 1, w, 1))
    return x.contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def evaluate(model, x, y, batch_size: int = 500, seed: int = 0, channels_last: str = "auto", progress: bool = False,
             amp: str = "off", **solve_kw) -> dict:
    """Accuracy and per-sample solver statistics on (x, y); the initial noise is drawn from `seed`.

    Args:
        model: an `EquilibriumModel`.
        x: images (N, C, H, W); y: labels (N,).
        batch_size: images per solve.
        seed: seed of the initial states' noise.
        channels_last: memory layout ("auto": channels-last on a CPU).
        progress: show a progress bar.
        amp: "bf16" solves under bfloat16 autocast (convolutions in bfloat16, state float32).
        **solve_kw: solver overrides (``max_iter``, ``tol``, ``solver``).

    Returns:
        {"accuracy", "n", "rel_residual" (N,), "nstep_mean", "fallback"}.

    Examples:
        >>> from deqnca import EquilibriumModel
        >>> r = evaluate(EquilibriumModel({"solver": "rollout", "solver_kw": {"max_iter": 2}, "gradient": "bptt"}),
        ...              torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long))
        >>> r["n"]
        4
    """
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    correct, rels, nsteps, fallback = 0, [], [], 0
    for i in tqdm(range(0, len(x), batch_size), desc="eval", leave=False, disable=not progress):
        xb = as_layout(x[i:i + batch_size].to(device), channels_last, device)
        with amp_context(amp, device):
            logits = model(xb, generator=gen, **solve_kw)
        correct += (logits.argmax(1).cpu() == y[i:i + batch_size].cpu()).sum().item()
        st = model.last_stats
        rels.append(st.rel_residual.float().cpu())
        nsteps.append(st.nstep)
        fallback += st.fallback
    return {"accuracy": correct / len(x), "n": len(x), "rel_residual": torch.cat(rels),
            "nstep_mean": sum(nsteps) / len(nsteps), "fallback": fallback}


def residual_summary(rel: torch.Tensor) -> dict:
    """Quantiles of per-sample relative residuals, and the share at or below 1e-3.

    Examples:
        >>> residual_summary(torch.tensor([1e-4, 1e-2]))["frac_below_1e-3"]
        0.5
    """
    rel = rel.double()
    q = torch.quantile(rel[torch.isfinite(rel)], torch.tensor([0.5, 0.9, 0.99], dtype=torch.double))
    return {"rel_median": q[0].item(), "rel_p90": q[1].item(), "rel_p99": q[2].item(),
            "rel_max": rel.max().item(), "frac_below_1e-3": (rel <= 1e-3).double().mean().item()}


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of an accuracy measured on `n` samples.

    Examples:
        >>> [round(v, 3) for v in wilson_interval(98, 100)]
        [0.93, 0.994]
    """
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)
