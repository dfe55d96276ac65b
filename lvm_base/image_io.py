"""Images in and out: any PIL-readable file -> square RGB -> float tensor, and back.

Every part of the project reads images through `load_image` / `load_image_tensor`, so grayscale, RGBA,
palette, 16-bit, CMYK and EXIF-rotated files all come out the same way everywhere.

Resize modes:
- ``crop`` (default): resize the short side to `size`, then center-crop a `size` x `size` square. Keeps
  the aspect ratio, which is what a tokenizer should be trained and evaluated on.
- ``squash``: plain resize to `size` x `size`, ignoring the aspect ratio. This is what the released LVM
  inference does (PIL resize to 256x256, then /255), so use it to reproduce that model exactly.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFile, ImageOps

from .errors import ImageLoadError
from .files import atomic_path

ResizeMode = Literal["crop", "squash"]
ValueRange = tuple[float, float]
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")

# Truncated files must fail loudly, never decode into half-gray images.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# Files from strangers (web uploads) are refused above this many pixels before decoding: a 500 KB PNG can
# claim 13000 x 13000 px, which costs seconds and over a GB to decode, and PIL's own bomb guard only warns
# below ~179M px.
MAX_PIXELS = 4096 * 4096


def _flatten_alpha(img: Image.Image, background=(255, 255, 255)) -> Image.Image:
    # Transparent pixels carry arbitrary RGB (often black); compositing on white is what viewers show.
    rgba = img.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, background + (255,))
    canvas.alpha_composite(rgba)
    return canvas.convert("RGB")


def _high_bit_depth_to_rgb(img: Image.Image) -> Image.Image:
    # PIL's convert("RGB") on 16-bit ("I;16") or 32-bit ("I") data clips at 255 -> nearly white images.
    arr = np.asarray(img)
    if img.mode == "F":
        arr = arr.astype(np.float64)
        peak = 1.0 if arr.size and np.nanmax(arr) <= 1.0 else 255.0
        arr = np.clip(np.nan_to_num(arr) / peak, 0, 1) * 255.0
    else:
        arr = np.clip(arr.astype(np.float64) / 257.0, 0, 255)  # 65535 / 255 = 257
    gray = Image.fromarray(np.round(arr).astype(np.uint8), mode="L")
    return gray.convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL image (after EXIF rotation) to 8-bit RGB."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        return _high_bit_depth_to_rgb(img)
    if img.mode in ("RGBA", "LA", "RGBa", "La", "PA") or (img.mode == "P" and "transparency" in img.info):
        return _flatten_alpha(img)
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open `path`, apply its EXIF orientation and return 8-bit RGB; raise ImageLoadError otherwise."""
    path = Path(path)
    if not path.exists():
        raise ImageLoadError(path, "no such file")
    if path.is_dir():
        raise ImageLoadError(path, "is a directory, not an image")
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            return to_rgb(img)
    except ImageLoadError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, EOFError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ImageLoadError(path, f"cannot read image ({reason})") from None


def check_pixels(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """(width, height) of the image `path`, read from its header without decoding the pixels; an
    ImageLoadError when it is not an image or claims more than `max_pixels` pixels."""
    path = Path(path)
    if not path.is_file():
        raise ImageLoadError(path, "no such file" if not path.exists() else "is not a file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limit below decides
            with Image.open(path) as img:  # reads the header only
                w, h = img.size
    except Image.DecompressionBombError:  # PIL refuses sizes far past its own limit at open already
        raise ImageLoadError(path, f"over the limit of {max_pixels:,} pixels") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ImageLoadError(path, f"cannot read image ({reason})") from None
    if w * h > max_pixels:
        raise ImageLoadError(path, f"{w}x{h} pixels, over the limit of {max_pixels:,} pixels ({w * h:,})")
    return w, h


def resize_square(img: Image.Image, size: int, mode: ResizeMode = "crop",
                  resample: Image.Resampling = Image.Resampling.BICUBIC) -> Image.Image:
    """Square `size` x `size` image: short-side resize + center crop, or a plain resize ('squash').
    `resample` NEAREST keeps the exact colours of label maps drawn as palette images."""
    if mode == "squash":
        return img.resize((size, size), resample)
    if mode != "crop":
        raise ValueError(f"resize mode must be 'crop' or 'squash', got {mode!r}")
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        # reducing_gap makes large downscales fast (JPEG draft + box pre-shrink) at no visible cost.
        img = img.resize((nw, nh), resample, reducing_gap=3.0 if resample != Image.Resampling.NEAREST else None)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


def pil_to_tensor(img: Image.Image, value_range: ValueRange = (-1.0, 1.0)):
    """RGB PIL image -> float32 tensor (3, H, W) scaled to `value_range`."""
    import torch

    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    lo, hi = value_range
    t = torch.from_numpy(arr).permute(2, 0, 1).contiguous()
    return t * (hi - lo) + lo


def tensor_to_pil(t, value_range: ValueRange = (-1.0, 1.0)) -> Image.Image:
    """Float tensor (3, H, W) in `value_range` -> RGB PIL image (values outside the range are clamped)."""
    import torch

    lo, hi = value_range
    t = t.detach().float().cpu()
    if t.ndim != 3 or t.shape[0] not in (1, 3):
        raise ValueError(f"expected a (3, H, W) image tensor, got shape {tuple(t.shape)}")
    t = ((t - lo) / (hi - lo)).clamp(0, 1)
    arr = (t * 255.0 + 0.5).to(torch.uint8).permute(1, 2, 0).numpy()
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return Image.fromarray(arr, mode="RGB")


def load_image_tensor(path, size: int, value_range: ValueRange = (-1.0, 1.0), mode: ResizeMode = "crop"):
    """One call from a file path to the tensor a tokenizer eats: (3, size, size) in `value_range`."""
    return pil_to_tensor(resize_square(load_image(path), size, mode), value_range)


def list_images(root: str | os.PathLike) -> list[Path]:
    """All image files under `root` (recursive, sorted, hidden files skipped)."""
    root = Path(root)
    if not root.is_dir():
        raise ImageLoadError(root, "is not a directory")
    return sorted(
        p for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() and not p.name.startswith(".")
    )


def make_grid(rows: Sequence[Sequence[Image.Image | None]], labels: Sequence[str] | None = None,
              col_labels: Sequence[str] | None = None, pad: int = 4, cell: int | None = None) -> Image.Image:
    """Lay images out in a grid (rows of cells, None = empty cell), optionally with row/column labels."""
    rows = [list(r) for r in rows]
    ncols = max((len(r) for r in rows), default=0)
    imgs = [im for r in rows for im in r if im is not None]
    if not imgs:
        raise ValueError("make_grid needs at least one image")
    cell = cell or max(max(im.size) for im in imgs)
    label_w = 0
    if labels:
        label_w = 8 + 7 * max(len(s) for s in labels)
    label_h = 14 if col_labels else 0
    W = label_w + ncols * (cell + pad) + pad
    H = label_h + len(rows) * (cell + pad) + pad
    canvas = Image.new("RGB", (W, H), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for c, text in enumerate(col_labels or []):
        draw.text((label_w + pad + c * (cell + pad), 1), text, fill=(0, 0, 0))
    for r, row in enumerate(rows):
        y = label_h + pad + r * (cell + pad)
        if labels and r < len(labels):
            draw.text((4, y + cell // 2 - 5), labels[r], fill=(0, 0, 0))
        for c, im in enumerate(row):
            if im is None:
                continue
            if im.size != (cell, cell):
                im = im.resize((cell, cell), Image.Resampling.NEAREST)
            canvas.paste(im.convert("RGB"), (label_w + pad + c * (cell + pad), y))
    return canvas


def save_png(img: Image.Image, path: str | os.PathLike) -> Path:
    """Save atomically as PNG (parents created)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return path
