"""Inline image preview in a terminal: kitty graphics, sixel, or ANSI half-blocks (works everywhere).

`preview(img)` picks what the terminal supports: kitty (TERM=xterm-kitty / KITTY_WINDOW_ID, or
LVM_DISPLAY=kitty), sixel (TERM mentions sixel, e.g. mlterm / foot / xterm -ti vt340 with TERM=xterm-sixel,
or LVM_DISPLAY=sixel) and otherwise 24-bit color half-blocks: one character cell shows two pixels, the
upper one as the foreground of U+2580 and the lower one as the background.
"""

from __future__ import annotations

import base64
import io
import os
import sys

from PIL import Image


def detect(env=None) -> str:
    env = os.environ if env is None else env
    forced = env.get("LVM_DISPLAY", "").lower()
    if forced in ("kitty", "sixel", "ansi", "none"):
        return forced
    term = env.get("TERM", "")
    if term == "xterm-kitty" or env.get("KITTY_WINDOW_ID"):
        return "kitty"
    if "sixel" in term or term in ("mlterm", "foot", "yaft-256color"):
        return "sixel"
    return "ansi"


def half_blocks(img: Image.Image, width: int = 64) -> str:
    """The image as lines of 24-bit ANSI half-block characters, `width` columns wide."""
    img = img.convert("RGB")
    h = max(2, round(img.height * width / img.width / 2) * 2)
    px = img.resize((width, h), Image.Resampling.BOX).load()
    lines = []
    for y in range(0, h, 2):
        cells = []
        for x in range(width):
            (r1, g1, b1), (r2, g2, b2) = px[x, y], px[x, y + 1]
            cells.append(f"\x1b[38;2;{r1};{g1};{b1}m\x1b[48;2;{r2};{g2};{b2}m\u2580")
        lines.append("".join(cells) + "\x1b[0m")
    return "\n".join(lines) + "\n"


def kitty(img: Image.Image) -> str:
    """Kitty graphics protocol: the PNG, base64, sent in 4096-byte chunks."""
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="PNG")
    data = base64.standard_b64encode(buf.getvalue()).decode()
    chunks = [data[i:i + 4096] for i in range(0, len(data), 4096)]
    out = []
    for i, c in enumerate(chunks):
        more = int(i < len(chunks) - 1)
        head = f"a=T,f=100,m={more}" if i == 0 else f"m={more}"
        out.append(f"\x1b_G{head};{c}\x1b\\")
    return "".join(out) + "\n"


def sixel(img: Image.Image) -> str:
    """DEC sixel: a 255-color palette, one band of six pixel rows at a time."""
    q = img.convert("RGB").quantize(colors=255)
    pal = q.getpalette()[: 3 * 256]
    w, h = q.size
    px = q.load()
    out = ["\x1bPq", f'"1;1;{w};{h}']
    used = sorted({px[x, y] for y in range(h) for x in range(w)})
    for c in used:
        r, g, b = pal[3 * c: 3 * c + 3]
        out.append(f"#{c};2;{r * 100 // 255};{g * 100 // 255};{b * 100 // 255}")
    for y0 in range(0, h, 6):
        rows = range(y0, min(y0 + 6, h))
        band = []
        for c in used:
            bits = [sum(1 << (y - y0) for y in rows if px[x, y] == c) for x in range(w)]
            if any(bits):
                band.append(f"#{c}" + "".join(chr(63 + b) for b in bits))
        out.append("$".join(band) + "-")
    out.append("\x1b\\")
    return "".join(out) + "\n"


def preview(img: Image.Image, mode: str | None = None, width: int = 64, stream=None) -> str:
    """Write `img` to the terminal in the best supported way; returns the mode used ('none' writes nothing)."""
    mode = mode or detect()
    stream = stream or sys.stdout
    if mode == "none":
        return mode
    if mode == "kitty":
        stream.write(kitty(img))
    elif mode == "sixel":
        stream.write(sixel(img))
    else:
        stream.write(half_blocks(img, width))
    stream.flush()
    return mode
