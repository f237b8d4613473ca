"""A fixed channels -> RGB projection, so a colour means the same hidden state in every frame."""

from __future__ import annotations

import numpy as np


def _as_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


class Projection:
    """PCA of per-cell channel vectors to 3 components, scaled by robust (1st/99th pct) ranges."""

    def __init__(self, mean: np.ndarray, components: np.ndarray, lo: np.ndarray, hi: np.ndarray):
        self.mean = np.asarray(mean, dtype=np.float64)  # (C,)
        self.components = np.asarray(components, dtype=np.float64)  # (3, C)
        self.lo = np.asarray(lo, dtype=np.float64)  # (3,)
        self.hi = np.asarray(hi, dtype=np.float64)  # (3,)

    @property
    def channels(self) -> int:
        return self.mean.shape[0]

    @classmethod
    def fit(cls, states, max_cells: int = 200_000, seed: int = 0) -> Projection:
        """Fit on states (N, C, H, W) or (C, H, W)."""
        s = _as_numpy(states)
        if s.ndim == 3:
            s = s[None]
        if s.ndim != 4:
            raise ValueError(f"expected (N, C, H, W) states, got shape {s.shape}")
        c = s.shape[1]
        cells = s.transpose(0, 2, 3, 1).reshape(-1, c)
        # Subsample so fitting on many rollouts stays cheap; PCA of a random subset is plenty for colours.
        if cells.shape[0] > max_cells:
            idx = np.random.default_rng(seed).choice(cells.shape[0], max_cells, replace=False)
            cells = cells[idx]
        mean = cells.mean(axis=0)
        centred = cells - mean
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        comps = np.zeros((3, c))
        k = min(3, vt.shape[0])
        comps[:k] = vt[:k]
        # SVD signs are arbitrary; fix them so refits on similar data give similar colours.
        for i in range(k):
            j = np.argmax(np.abs(comps[i]))
            if comps[i, j] < 0:
                comps[i] = -comps[i]
        proj = centred @ comps.T
        lo = np.percentile(proj, 1, axis=0)
        hi = np.percentile(proj, 99, axis=0)
        return cls(mean, comps, lo, hi)

    def project(self, states) -> np.ndarray:
        """Scaled components in [0, 1], shape (..., H, W, 3) for states (..., C, H, W)."""
        s = _as_numpy(states)
        if s.shape[-3] != self.channels:
            raise ValueError(f"projection fitted on {self.channels} channels, got shape {s.shape}")
        cells = np.moveaxis(s, -3, -1)
        p = (cells - self.mean) @ self.components.T
        span = self.hi - self.lo
        # A degenerate (constant or padded) component maps to mid-grey rather than dividing by zero.
        safe = np.where(span > 1e-12, span, 1.0)
        scaled = np.where(span > 1e-12, (p - self.lo) / safe, 0.5)
        return np.clip(scaled, 0.0, 1.0)

    def to_rgb(self, state) -> np.ndarray:
        """(C, H, W) -> uint8 (H, W, 3)."""
        s = _as_numpy(state)
        if s.ndim != 3:
            raise ValueError(f"expected (C, H, W) state, got shape {s.shape}")
        return np.round(self.project(s) * 255).astype(np.uint8)

    def to_rgb_batch(self, states) -> np.ndarray:
        """(T, C, H, W) -> uint8 (T, H, W, 3)."""
        s = _as_numpy(states)
        if s.ndim != 4:
            raise ValueError(f"expected (T, C, H, W) states, got shape {s.shape}")
        return np.round(self.project(s) * 255).astype(np.uint8)
