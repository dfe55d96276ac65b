"""Procedurally drawn scenes for training and benchmarking tokenizers offline.

Each scene: a background (linear/radial gradient, stripes, checkerboard or value noise), then 3-12
shapes (ellipses, rectangles, polygons, lines, rings) in random colors, some textured, plus mild blur
and noise. Deterministic per (seed, index).

    python -m tokenizer.synthetic OUT_DIR N [--size 128] [--seed 0]
"""

from __future__ import annotations

import argparse
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def _color(rng):
    return tuple(int(c) for c in rng.integers(0, 256, 3))


def _background(rng, size):
    kind = rng.integers(0, 5)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    c1, c2 = np.array(_color(rng), np.float32), np.array(_color(rng), np.float32)
    if kind == 0:  # linear gradient
        a = rng.uniform(0, 2 * math.pi)
        t = (np.cos(a) * xx + np.sin(a) * yy)
        t = (t - t.min()) / (np.ptp(t) + 1e-6)
    elif kind == 1:  # radial gradient
        cx, cy = rng.uniform(0, 1, 2)
        t = np.clip(np.hypot(xx - cx, yy - cy) / rng.uniform(0.4, 1.2), 0, 1)
    elif kind == 2:  # stripes
        a, f = rng.uniform(0, math.pi), rng.uniform(3, 20)
        t = 0.5 + 0.5 * np.sin(2 * math.pi * f * (np.cos(a) * xx + np.sin(a) * yy))
    elif kind == 3:  # checkerboard
        n = rng.integers(2, 12)
        t = ((np.floor(xx * n) + np.floor(yy * n)) % 2).astype(np.float32)
    else:  # smooth value noise
        n = rng.integers(3, 9)
        grid = rng.uniform(0, 1, (n, n)).astype(np.float32)
        t = np.asarray(Image.fromarray((grid * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC),
                       np.float32) / 255
    img = c1 * (1 - t[..., None]) + c2 * t[..., None]
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _texture_fill(rng, size, color):
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    f = rng.uniform(0.05, 0.4)
    t = 0.5 + 0.5 * np.sin(f * xx + rng.uniform(0, 6)) * np.sin(f * yy * rng.uniform(0.5, 2))
    c2 = np.array(_color(rng), np.float32)
    img = np.array(color, np.float32) * (1 - t[..., None]) + c2 * t[..., None]
    return Image.fromarray(img.astype(np.uint8))


def draw_scene(rng: np.random.Generator, size: int = 128) -> Image.Image:
    """One random scene as an RGB PIL image of `size` x `size`."""
    img = _background(rng, size)
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(3, 13)):
        kind = rng.integers(0, 5)
        x0, y0 = rng.uniform(-0.1, 0.9, 2) * size
        w, h = rng.uniform(0.05, 0.5, 2) * size
        box = [x0, y0, x0 + w, y0 + h]
        color = _color(rng)
        if kind in (0, 1) and rng.uniform() < 0.3:  # textured shape through a mask
            mask = Image.new("L", (size, size), 0)
            md = ImageDraw.Draw(mask)
            (md.ellipse if kind == 0 else md.rectangle)(box, fill=255)
            img.paste(_texture_fill(rng, size, color), (0, 0), mask)
            draw = ImageDraw.Draw(img)
        elif kind == 0:
            draw.ellipse(box, fill=color, outline=_color(rng) if rng.uniform() < 0.5 else None)
        elif kind == 1:
            draw.rectangle(box, fill=color)
        elif kind == 2:
            n = rng.integers(3, 8)
            cx, cy, r = x0 + w / 2, y0 + h / 2, max(w, h) / 2
            angles = np.sort(rng.uniform(0, 2 * math.pi, n))
            draw.polygon([(cx + r * math.cos(a), cy + r * math.sin(a)) for a in angles], fill=color)
        elif kind == 3:
            draw.line([(x0, y0), (x0 + rng.uniform(-1, 1) * size / 2, y0 + rng.uniform(-1, 1) * size / 2)],
                      fill=color, width=int(rng.integers(1, max(2, size // 16))))
        else:
            draw.ellipse(box, outline=color, width=int(rng.integers(1, max(2, size // 20))))
    if rng.uniform() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.5)))
    arr = np.asarray(img, np.float32)
    arr = arr + rng.normal(0, rng.uniform(0, 6), arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def scene(seed: int, index: int, size: int = 128) -> Image.Image:
    return draw_scene(np.random.default_rng([seed, index]), size)


def main(argv=None):
    from pathlib import Path

    from tqdm import tqdm

    from lvm_base.image_io import save_png

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    p.add_argument("n", type=int)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    out = Path(a.out)
    for i in tqdm(range(a.n), desc="scenes"):
        path = out / f"{i // 1000:03d}" / f"scene_{i:06d}.png"
        if not path.exists():
            save_png(scene(a.seed, i, a.size), path)


if __name__ == "__main__":
    main()
