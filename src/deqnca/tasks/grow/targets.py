"""Target images for growing NCAs: premultiplied RGBA tensors (4, H, W) in 0..1.

Two targets ship as PNGs in `deqnca/_data/targets/` so nothing needs a font at run time:
  lizard.png  🦎 (U+1F98E) from Noto Color Emoji, 40×40 padded to 72×72 (`render_emoji`)
  small.png   a 16×16 drawn shape padded to 24×24, for tests and CPU runs (`draw_small_target`)
`python -m deqnca.tasks.grow.targets` rewrites both (the lizard only where the font is installed:
`apt-get install fonts-noto-color-emoji`).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from deqnca.core.fileio import read_bytes_bounded
from deqnca.core.resources import targets_dir

NAMED_TARGETS = ("lizard", "small")
NOTO_EMOJI_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
LIZARD = "\U0001F98E"
MAX_TARGET_BYTES = 64 << 20          # a target image file
MAX_TARGET_SIDE = 1024               # a target's width and height (the shipped ones: 72 and 24)


def premultiply(rgba_uint8: np.ndarray) -> torch.Tensor:
    """(H, W, 4) uint8 straight alpha → (4, H, W) float premultiplied, as the paper's loss expects."""
    x = torch.from_numpy(rgba_uint8.astype(np.float32) / 255.0)
    x[..., :3] *= x[..., 3:]
    return x.permute(2, 0, 1).contiguous()


def load_target(spec: str, pad: int = 0) -> torch.Tensor:
    """'lizard', 'small' or a path to any image Pillow can convert to RGBA; `pad` transparent cells per side."""
    from PIL import Image, UnidentifiedImageError

    path = target_path(spec)
    if not path.exists():
        raise FileNotFoundError(f"--target {spec}: no such file (give lizard, small or a path to an RGBA image)")
    data = read_bytes_bounded(path, MAX_TARGET_BYTES, "--target")      # a regular file, of bounded size
    rgba, pil_limit = None, Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None           # our own cap (far lower) is checked instead, with the image's size
    try:
        with Image.open(io.BytesIO(data)) as im:        # lazy: the header only, nothing decoded yet
            width, height = im.size                     # checked before any pixel is decoded
            if 0 < width <= MAX_TARGET_SIDE and 0 < height <= MAX_TARGET_SIDE:
                rgba = np.asarray(im.convert("RGBA"))
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as e:
        raise ValueError(f"--target {path}: not a readable image ({e})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = pil_limit
    if rgba is None:
        raise ValueError(f"--target {path}: a {width}×{height} image; a target is at most "
                         f"{MAX_TARGET_SIDE}×{MAX_TARGET_SIDE} pixels (the lizard is 72×72)")
    if rgba[..., 3].max() == 0:
        raise ValueError(f"--target {path}: the image is fully transparent; a target needs a visible shape")
    if pad:
        rgba = np.pad(rgba, ((pad, pad), (pad, pad), (0, 0)))
    return premultiply(rgba)


def target_path(spec: str) -> Path:
    """The file of target `spec`: a shipped one's ('lizard', 'small') or the path given."""
    return targets_dir() / f"{spec}.png" if spec in NAMED_TARGETS else Path(spec)


def target_record(spec: str, pad: int, target: torch.Tensor) -> dict:
    """The identity of a growing NCA's data, its target (`deqnca.data.provenance`): the hash of the target
    tensor trained on (premultiplied RGBA, padded), its shape and padding, and the image file's name and hash."""
    import hashlib

    from deqnca.data.provenance import tensor_sha256

    path = target_path(spec)
    record = {"name": f"target:{path.name}", "source": "vendored" if spec in NAMED_TARGETS else str(path.resolve()),
              "sha256": tensor_sha256(target.float()), "shape": list(target.shape), "pad": pad}
    if path.is_file():
        record["file_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    return record


def render_emoji(char: str = LIZARD, size: int = 40, pad: int = 16, font: Path = NOTO_EMOJI_FONT) -> np.ndarray:
    """(size+2·pad)² uint8 RGBA of an emoji, as in the paper: the bitmap font at its native 109 px,
    scaled to `size` with antialiasing (Lanczos), transparent padding around it."""
    from PIL import Image, ImageDraw, ImageFont

    emoji_font = ImageFont.truetype(str(font), 109)      # Noto Color Emoji only has the 109 px strike
    canvas = Image.new("RGBA", (136, 128), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((0, 0), char, font=emoji_font, embedded_color=True)
    canvas = canvas.crop(canvas.getbbox())
    canvas.thumbnail((size, size), Image.LANCZOS)
    out = np.zeros((size + 2 * pad, size + 2 * pad, 4), np.uint8)
    h, w = canvas.height, canvas.width
    top, left = pad + (size - h) // 2, pad + (size - w) // 2
    out[top:top + h, left:left + w] = np.asarray(canvas)
    return out


def draw_small_target(size: int = 16, pad: int = 4) -> np.ndarray:
    """A 16×16 two-colour shape (a green ring around an orange square with a notch), padded to 24×24:
    small enough for CPU runs, asymmetric enough that the NCA must break the seed's symmetry."""
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    c = size / 2
    r = np.hypot(yy - c, xx - c)
    img = np.zeros((size, size, 4), np.uint8)
    ring = (r <= c - 0.5) & (r >= c - 3.5)
    core = (np.abs(yy - c) <= c / 2) & (np.abs(xx - c) <= c / 2)
    notch = core & (yy < c) & (xx > c)                     # top-right quarter missing: no symmetry
    img[ring] = (40, 160, 60, 255)
    img[core & ~notch] = (240, 130, 20, 255)
    return np.pad(img, ((pad, pad), (pad, pad), (0, 0)))


def write_shipped_targets(dest: Path | None = None) -> list[Path]:
    from PIL import Image

    dest = dest or targets_dir()
    written = [dest / "small.png"]
    Image.fromarray(draw_small_target()).save(written[0])
    if NOTO_EMOJI_FONT.exists():
        Image.fromarray(render_emoji()).save(dest / "lizard.png")
        written.append(dest / "lizard.png")
    return written


if __name__ == "__main__":
    for p in write_shipped_targets():
        print(f"wrote {p}")
