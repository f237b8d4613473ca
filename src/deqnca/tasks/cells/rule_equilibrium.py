"""A self-classifying rule with a unique fixed point: the equilibrium counterpart of the article's rule.

The grey channel x is immutable conditioning; the state z (C channels, zero on dead cells) follows

    f(z) = m ⊙ tanh(Ŵ_z * (m ⊙ z) + b(x)),    m = [x > 0.1] the alive cells,
    b(x) = W_b * [x, relu(W_e * x + c_e)] + c_b   (local features of the cell's 5×5 neighbourhood of ink)
    Ŵ_z  = W_z · γ / max(σ(W_z), γ)            σ: the convolution's operator norm, γ < 1

and each alive cell reads its label from its own state through a per-cell head (1×1 convolutions).

Why a contraction: tanh is 1-Lipschitz and multiplying by the 0/1 mask m never increases a norm, so
‖f(z₁) − f(z₂)‖ ≤ ‖Ŵ_z * m⊙(z₁ − z₂)‖ ≤ γ‖z₁ − z₂‖ whatever x is. By Banach's theorem f has exactly one
fixed point z*(x), every initial state reaches it, and plain iteration gets there at rate γ (tests check
the geometric fall of the residual and the same z* from different starts). Dead cells are 0 after one
step whatever they held, and stay 0: f never reads them (m ⊙ z) and never writes them (m ⊙ tanh).

σ is estimated as `core/rules/contractive.py` does, by power iteration on a periodic grid of side
`norm_grid` with a persistent vector (one iteration per training step, `eval_power_iters` in eval
mode). On a 64-grid the sampled frequencies lie within π/64 of every frequency, so for a 3×3 kernel the
estimate is within a fraction of a percent of the infinite-grid norm that bounds the zero-padded
convolution on any grid; γ = 0.9 leaves a 10% margin.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from deqnca.core.rules.contractive import conv_operator_norm


def _apply(z, m, w, b):
    return m * torch.tanh(F.conv2d(m * z, w, padding=1) + b)


def _apply_dilated(z, m, ws, b, dilations):
    mz = m * z
    a = F.conv2d(mz, ws[0], padding=1)
    for w, d in zip(ws[1:], dilations[1:]):
        a = a + F.conv2d(mz, w, padding=d, dilation=d, groups=w.shape[0])
    return m * torch.tanh(a + b)


class ContractiveCellsRule(nn.Module):
    """f(z) = m ⊙ tanh(Ŵ_z * (m ⊙ z) + b(x)) with ‖Ŵ_z‖ ≤ γ < 1, and a per-cell read-out head."""

    def __init__(self, input_channels: int = 1, state_channels: int = 32, embed: int = 16, head_hidden: int = 32,
                 classes: int = 10, gamma: float = 0.9, alive_threshold: float = 0.1, norm_grid: int = 64,
                 eval_power_iters: int = 20, init: str = "random", dilations=(1,), renormalize: bool = False):
        super().__init__()
        dilations = tuple(int(d) for d in dilations)
        if dilations[0] != 1 or list(dilations) != sorted(set(dilations)):
            raise ValueError(f"dilations {list(dilations)}: increasing, starting at 1 (e.g. [1, 2, 4])")
        self.dilations = dilations
        if init not in ("random", "transport"):
            raise ValueError(f"init {init!r}: choose random or transport")
        if not 0 < gamma < 1:
            raise ValueError(f"gamma must be in (0, 1) for a contraction, got {gamma}")
        self.input_channels, self.state_channels, self.classes = input_channels, state_channels, classes
        self.gamma, self.alive_threshold, self.eval_power_iters = gamma, alive_threshold, eval_power_iters
        self.renormalize = renormalize
        self._compiled = None
        self.embed = nn.Conv2d(input_channels, embed, 3, padding=1)
        self.inject = nn.Conv2d(input_channels + embed, state_channels, 3, padding=1)
        self.w_z = nn.Conv2d(state_channels, state_channels, 3, padding=1, bias=False)
        if len(dilations) > 1:
            # the far taps are per channel (depthwise): they carry each channel's message d cells at a time,
            # the 3×3 W_z mixes the channels
            self.w_far = nn.Parameter(torch.empty(len(dilations) - 1, state_channels, 3, 3))
            nn.init.uniform_(self.w_far, -1 / 3, 1 / 3)
        if init == "transport":
            self._transport_init()
        layers = [nn.Conv2d(state_channels, head_hidden, 1), nn.ReLU(), nn.Conv2d(head_hidden, classes, 1)] \
            if head_hidden else [nn.Conv2d(state_channels, classes, 1)]
        self.head = nn.Sequential(*layers)
        v = torch.randn(1, state_channels, norm_grid, norm_grid)
        self.register_buffer("power_vector", v / v.norm())
        self.register_buffer("sigma", torch.ones(()))
        if v.device.type != "meta":          # a shape-only build (checkpoint validation) needs no norm
            self._update_norm(50)

    @torch.no_grad()
    def _transport_init(self):
        # channel c copies itself from the neighbour in direction c mod 8 (a shift: operator norm 1, so
        # Ŵ_z = γ·shift): the fixed point starts as discounted sums of the drive along 8 rays, features
        # that see across the digit from the first step; the rest of W_z starts small
        self.w_z.weight.mul_(0.1)
        dirs = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]
        for c in range(self.state_channels - self.state_channels % 8):
            dy, dx = dirs[c % 8]
            self.w_z.weight[c, c].zero_()
            self.w_z.weight[c, c, 1 + dy, 1 + dx] = 1.0

    def operator_kernel(self) -> torch.Tensor:
        """The whole z-convolution as one (C, C, 2r+1, 2r+1) kernel (r the largest dilation): what σ bounds."""
        if len(self.dilations) == 1:
            return self.w_z.weight
        r, c = self.dilations[-1], self.state_channels
        kernel = self.w_z.weight.new_zeros(c, c, 2 * r + 1, 2 * r + 1)
        kernel[:, :, r - 1:r + 2, r - 1:r + 2] = self.w_z.weight
        for w, d in zip(self.w_far, self.dilations[1:]):
            taps = torch.diag_embed(w.permute(1, 2, 0)).permute(2, 3, 0, 1)       # (C, C, 3, 3), diagonal
            at = (slice(None), slice(None), slice(r - d, r + d + 1, d), slice(r - d, r + d + 1, d))
            kernel[at] = kernel[at] + taps
        return kernel

    def _update_norm(self, n_iter: int, keep: bool = True):
        sigma, v = conv_operator_norm(self.operator_kernel(), self.power_vector, n_iter)
        if keep:
            with torch.no_grad():
                self.power_vector.copy_(v)
                self.sigma.copy_(sigma.detach())
        return sigma

    def state_weight(self) -> torch.Tensor:
        """Ŵ_z: W_z rescaled to operator norm at most γ (differentiable through σ). In eval mode the kept
        vector is not moved, so every map built from the same weights is the same map."""
        sigma = self._update_norm(1) if self.training else self._update_norm(self.eval_power_iters, keep=False)
        scale = self.gamma / torch.clamp(sigma, min=self.gamma)
        if len(self.dilations) == 1:
            return self.w_z.weight * scale
        return [self.w_z.weight * scale, *(w.unsqueeze(1) * scale for w in self.w_far)]

    @torch.no_grad()
    def after_step(self):
        """Rescale the raw W_z (and the far taps) back to norm γ when they have grown past it.

        The map does not change (Ŵ_z = W_z·γ/σ is scale-free); the step size does: Adam's steps of fixed
        size move a large raw W_z less and less (a 61-minute training without it ended with σ = 27.6).
        Off by default: in 600 steps it learnt no faster (docs/cells.md). Called after every optimiser
        step by the cells task."""
        if not self.renormalize:
            return
        shrink = (self.gamma / conv_operator_norm(self.operator_kernel(), self.power_vector, 0)[0]).clamp(max=1.0)
        self.w_z.weight.mul_(shrink)
        if len(self.dilations) > 1:
            self.w_far.mul_(shrink)

    def lipschitz_bound(self) -> float:
        """The map's Lipschitz constant in z as estimated now: min(σ, γ) (at most γ < 1)."""
        return float(min(self.sigma.item(), self.gamma))

    def alive(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) bool: the cells on the digit."""
        return x > self.alive_threshold

    def initial_state(self, x: torch.Tensor) -> torch.Tensor:
        """Zero everywhere (any start reaches the same fixed point; zero keeps dead cells unchanged)."""
        return x.new_zeros(x.shape[0], self.state_channels, *x.shape[2:])

    def drive(self, x: torch.Tensor) -> torch.Tensor:
        """b(x): the input's local features, computed once per solve."""
        return self.inject(torch.cat([x, F.relu(self.embed(x))], dim=1))

    def step_map(self, x: torch.Tensor, generator: torch.Generator | None = None):
        """The map z -> f(z) on input x (weights normalised and the drive computed once); what a rollout
        or a solver iterates. Not `bind`: this rule conditions on x itself and is not an EquilibriumModel rule."""
        m = self.alive(x).to(x.dtype)
        b, w = self.drive(x), self.state_weight()
        if len(self.dilations) > 1:
            apply = self._compiled or _apply_dilated
            return lambda z: apply(z, m, w, b, self.dilations)
        apply = self._compiled or _apply
        return lambda z: apply(z, m, w, b)

    expected_map = step_map

    def compile_for_eval(self) -> None:
        """Compile the map with torch.compile for long evaluations (float rounding differs, nothing else)."""
        self._compiled = torch.compile(_apply if len(self.dilations) == 1 else _apply_dilated, dynamic=False)

    def step(self, z: torch.Tensor, x: torch.Tensor, generator: torch.Generator | None = None,
             stochastic: bool = True) -> torch.Tensor:
        """One application of f (one step of the cellular automaton)."""
        return self.step_map(x)(z)

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """(B, classes, H, W): each cell's label scores from its own state."""
        return self.head(z)
