"""Static figures and GIFs of rollouts. Headless (Agg); every function writes a file and returns its path.

Every PNG figure gets an SVG twin beside it (same name, `.svg`) for slides and papers; every GIF frame
carries its step and the relative residual ‖f(z) − z‖ / ‖f(z)‖ of the step that produced it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from deqnca.core.fileio import atomic_write  # noqa: E402
from deqnca.viz.project import Projection  # noqa: E402

DPI = 100


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _prepare(path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _savefig(fig, path: Path, **kw) -> None:
    """`fig.savefig` through a temporary file renamed over `path`: a link where the file goes is replaced,
    never written through."""
    fmt = path.suffix.lower().lstrip(".") or "png"
    atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, **kw))


def _save(fig, path: Path) -> Path:
    """Write `fig` to `path` (a PNG) and its vector twin `path.with_suffix(".svg")`; returns `path`."""
    try:
        _savefig(fig, path, dpi=DPI, bbox_inches="tight")
        if path.suffix.lower() == ".png":
            with matplotlib.rc_context({"svg.hashsalt": "deqnca", "svg.fonttype": "none"}):
                _savefig(fig, path.with_suffix(".svg"), bbox_inches="tight", metadata={"Date": None})
    finally:
        plt.close(fig)
    return path


def save_figure(fig, path, vector: bool = True) -> Path:
    """Write a matplotlib figure as a PNG (creating its folder), plus its SVG twin unless `vector` is False
    (pictures made of pixels gain nothing from one), close it and return the path: the way figures drawn
    outside this module (tasks/cells/figures.py) are saved."""
    path = _prepare(path)
    if vector:
        return _save(fig, path)
    try:
        _savefig(fig, path, dpi=DPI, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def relative_residuals(states) -> list[float | None]:
    """‖s_t − s_(t−1)‖ / ‖s_t‖ for each frame of a rollout (None for the first): the relative residual
    ‖f(z) − z‖ / ‖f(z)‖ of the step that produced frame t."""
    s = _np(states).astype(np.float64).reshape(len(_np(states)), -1)
    out: list[float | None] = [None]
    for t in range(1, len(s)):
        den = np.linalg.norm(s[t])
        out.append(float(np.linalg.norm(s[t] - s[t - 1]) / den) if den > 0 else 0.0)
    return out


def step_caption(step: int, rel: float | None) -> str:
    """`step 12   rel. residual 3.4e-02` (the residual left out where there is none)."""
    return f"step {step}" + ("" if rel is None else f"   rel. residual {rel:.1e}")


def _font(px: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=px)
    except TypeError:                       # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def caption_frames(frames, captions: Sequence[str], px: int = 12) -> np.ndarray:
    """Frames (T, H, W, 3) uint8 with a dark strip below each holding its caption (drawn with Pillow)."""
    from PIL import Image, ImageDraw

    frames = np.asarray(frames)
    if len(captions) != len(frames):
        raise ValueError(f"{len(captions)} captions for {len(frames)} frames")
    font = _font(px)
    height = px + 8
    out = []
    for frame, text in zip(frames, captions):
        strip = Image.new("RGB", (frame.shape[1], height), (24, 24, 24))
        ImageDraw.Draw(strip).text((4, 3), text, fill=(235, 235, 235), font=font)
        out.append(np.concatenate([frame, np.asarray(strip)], axis=0))
    return np.stack(out)


def _upscale(img: np.ndarray, scale: int) -> np.ndarray:
    if scale <= 1:
        return img
    return np.repeat(np.repeat(img, scale, axis=0), scale, axis=1)


def _grey_to_rgb_uint8(image) -> np.ndarray:
    a = _np(image).astype(np.float64)
    a = np.squeeze(a)
    if a.ndim == 3 and a.shape[-1] == 3:
        rgb = a
    elif a.ndim == 2:
        rgb = np.repeat(a[..., None], 3, axis=-1)
    else:
        raise ValueError(f"expected an (H, W) or (H, W, 3) image, got shape {a.shape}")
    if rgb.max() > 1.0 + 1e-6:  # already 0..255
        rgb = rgb / 255.0
    return np.round(np.clip(rgb, 0.0, 1.0) * 255).astype(np.uint8)


def default_steps(T: int, n: int = 8) -> list[int]:
    """About n steps in 0..T, spaced roughly logarithmically, always including 0 and T."""
    if T <= 0:
        return [0]
    if T + 1 <= n:
        return list(range(T + 1))
    # Try growing the geometric grid until rounding collisions leave n distinct steps.
    for m in range(n - 1, 4 * n):
        steps = sorted({0, T, *np.round(np.geomspace(1, T, m)).astype(int).tolist()})
        if len(steps) >= n:
            return steps
    return steps


def frame_strip(states, projection: Projection, path, steps: Sequence[int] | None = None, image=None,
                title: str | None = None, scale: int = 4) -> Path:
    """PNG strip of RGB-projected frames at `steps` (default: ~8 log-spaced), optional input first."""
    path = _prepare(path)
    s = _np(states)
    T = s.shape[0] - 1
    steps = default_steps(T) if steps is None else [int(t) for t in steps]
    for t in steps:
        if not 0 <= t <= T:
            raise ValueError(f"step {t} outside 0..{T}")
    panels: list[tuple[np.ndarray, str]] = []
    if image is not None:
        panels.append((_upscale(_grey_to_rgb_uint8(image), scale), "input"))
    for t in steps:
        panels.append((_upscale(projection.to_rgb(s[t]), scale), f"t={t}"))
    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(1.5 * n, 1.8 if title else 1.6), squeeze=False)
    for ax, (img, label) in zip(axes[0], panels):
        ax.imshow(img, interpolation="nearest")
        ax.set_title(label, fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def _progress_bar(width: int, height: int, frac: float) -> np.ndarray:
    bar = np.full((height, width, 3), 40, dtype=np.uint8)
    bar[:, : int(round(frac * width))] = (230, 160, 40)
    return bar


def save_gif(states, projection: Projection, path, fps: int = 8, scale: int = 8, image=None) -> Path:
    """Animated, looping GIF of every frame (T+1 of them), optional input image on the left.

    A thin progress bar under each frame shows t/T, and a caption its step and relative residual;
    the bar also keeps consecutive frames distinct, since GIF writers merge identical frames (as a
    converged rollout produces).
    """
    import imageio.v3 as iio

    path = _prepare(path)
    s = _np(states)
    T = s.shape[0] - 1
    frames_rgb = projection.to_rgb_batch(s)
    left = None
    if image is not None:
        left = _upscale(_grey_to_rgb_uint8(image), scale)
    frames = []
    for t, rgb in enumerate(frames_rgb):
        img = _upscale(rgb, scale)
        if left is not None:
            if left.shape[0] != img.shape[0]:
                raise ValueError(f"image height {left.shape[0] // scale} != state height {rgb.shape[0]}")
            gap = np.full((img.shape[0], max(2, scale), 3), 255, dtype=np.uint8)
            img = np.concatenate([left, gap, img], axis=1)
        bar = _progress_bar(img.shape[1], max(3, scale // 2), t / T if T > 0 else 1.0)
        frames.append(np.concatenate([img, bar], axis=0))
    frames = caption_frames(frames, [step_caption(t, r) for t, r in enumerate(relative_residuals(s))])
    # Pillow's GIF writer takes duration in milliseconds and loop=0 means forever.
    atomic_write(path, lambda tmp: iio.imwrite(tmp, np.stack(frames), extension=".gif", plugin="pillow",
                                               duration=int(round(1000 / fps)), loop=0))
    return path


def rollout_curves(rel_residual, probs, path, label: int | None = None, title: str | None = None) -> Path:
    """Relative residual (log y) and every class probability vs step, in two stacked panels."""
    path = _prepare(path)
    r = _np(rel_residual).astype(np.float64).reshape(-1)
    p = _np(probs).astype(np.float64)
    fig, (ax0, ax1) = plt.subplots(2, 1, figsize=(6, 5), sharex=True)
    # Residual t measures the change from step t-1 to t, so it starts at step 1.
    ax0.plot(np.arange(1, len(r) + 1), r, color="tab:blue", lw=1.5)
    ax0.set_yscale("log", nonpositive="mask")
    ax0.set_ylabel("relative residual")
    ax0.grid(True, which="both", alpha=0.3)
    steps = np.arange(p.shape[0])
    if label is None:
        # Without a true class nothing is singled out, so every class gets its own colour.
        for k in range(p.shape[1]):
            ax1.plot(steps, p[:, k], lw=1.2, label=str(k))
    else:
        others = [k for k in range(p.shape[1]) if k != int(label)]
        for i, k in enumerate(others):
            ax1.plot(steps, p[:, k], color="0.6", lw=0.8, label="other classes" if i == 0 else None)
        ax1.plot(steps, p[:, int(label)], color="tab:red", lw=2.5, label=f"true class {int(label)}")
    final = int(np.argmax(p[-1]))
    ax1.set_title(f"final prediction: {final} (p={p[-1, final]:.2f})", fontsize=9)
    ax1.set_ylim(-0.02, 1.02)
    ax1.set_xlabel("step")
    ax1.set_ylabel("class probability")
    ax1.grid(True, alpha=0.3)
    ax1.legend(fontsize=7 if label is None else 8, loc="best", ncol=2 if label is None else 1)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def line_plot(xs, series: dict[str, Sequence[float]], path, xlabel: str, ylabel: str, title: str | None = None,
              logx: bool = False, logy: bool = False, hline: tuple[float, str] | None = None) -> Path:
    """Several named series against shared xs, with markers and a legend; optional (y, label) reference."""
    path = _prepare(path)
    x = np.asarray(_np(xs), dtype=np.float64)
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, ys in series.items():
        y = np.asarray([np.nan if v is None else float(v) for v in _np(ys).reshape(-1)], dtype=np.float64)
        if len(y) != len(x):
            raise ValueError(f"series {name!r} has {len(y)} points, xs has {len(x)}")
        ax.plot(x, y, marker="o", ms=4, lw=1.5, label=name)
    if hline is not None:
        ax.axhline(float(hline[0]), color="k", ls="--", lw=1, label=hline[1])
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def image_grid(images, path, titles: Sequence[str] | None = None, ncols: int = 8, scale: float = 1.2,
               cmap: str = "gray", vmin: float | None = None, vmax: float | None = None,
               legend: Sequence[str] | None = None, points: Sequence | None = None) -> Path:
    """Grid of small (H, W) or (H, W, 3) images; `scale` is inches per panel.

    2-D images use `cmap` (pass e.g. cmap="tab10", vmin=0, vmax=9 for label maps); floats in
    [0, 1] default to that range so greyscale crops keep their absolute brightness.
    `legend`: names of the colour indices vmin, vmin+1, ... (e.g. the digits of a label map), drawn
    as one legend below the grid. `points`: per panel, a list of (row, col, colour, label) markers
    drawn on top (e.g. a maze's start and goal), or None.
    """
    path = _prepare(path)
    imgs = [np.squeeze(_np(im)) for im in images]
    if not imgs:
        raise ValueError("image_grid needs at least one image")
    if titles is not None and len(titles) != len(imgs):
        raise ValueError(f"{len(titles)} titles for {len(imgs)} images")
    n = len(imgs)
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(scale * ncols, (scale + (0.25 if titles else 0)) * nrows),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        im = imgs[i]
        if im.ndim == 2:
            lo, hi = vmin, vmax
            if lo is None and hi is None and np.issubdtype(im.dtype, np.floating) and im.min() >= 0 and im.max() <= 1:
                lo, hi = 0.0, 1.0
            ax.imshow(im, cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
        elif im.ndim == 3 and im.shape[-1] in (3, 4):
            if np.issubdtype(im.dtype, np.floating):
                im = np.clip(im, 0.0, 1.0)
            ax.imshow(im, interpolation="nearest")
        else:
            raise ValueError(f"image {i} has shape {im.shape}; expected (H, W) or (H, W, 3)")
        if titles is not None:
            ax.set_title(str(titles[i]), fontsize=8)
        for row, col, colour, label in (points[i] or []) if points is not None else []:
            ax.scatter([col], [row], s=60, c=[colour], edgecolors="white", linewidths=1.5, zorder=3)
            ax.annotate(label, (col, row), xytext=(5, 5), textcoords="offset points", fontsize=8,
                        color="white", fontweight="bold", zorder=4,
                        bbox={"boxstyle": "round,pad=0.15", "fc": colour, "ec": "none", "alpha": 0.9})
    fig.tight_layout()
    if legend is not None:
        from matplotlib.patches import Patch

        colours = plt.get_cmap(cmap)
        lo = 0 if vmin is None else vmin
        hi = len(legend) - 1 + lo if vmax is None else vmax
        handles = [Patch(facecolor=colours((value - lo) / max(hi - lo, 1)), label=str(name))
                   for value, name in enumerate(legend, start=lo)]
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False,
                   bbox_to_anchor=(0.5, -0.02), handlelength=1.2, columnspacing=1.0)
        fig.subplots_adjust(bottom=0.12)
    return _save(fig, path)
