"""`lvm prompt --batch`: the released batch-generation format, one JSON object per line.

    {"input": ["a.png", "b.png"], "output": "out.png", "target": "c.png"}   # "target" is optional

Each line's images are a sequential prompt; the output PNG is the input images and the generated image side
by side, and a target adds the MSE (pixels in [0, 1]) of the generated image against it. A bad line is
skipped with a one-line reason and the batch goes on.
"""

from __future__ import annotations

import json
from pathlib import Path

from lvm.prompt.prompts import Prompt
from lvm.prompt.session import Session
from tokenizer.common.errors import InputError


def run_batch(s: Session, path, print_fn=print) -> int:
    """Generate one image per line of the JSONL file `path`; 0 when every line was generated, else 1."""
    import numpy as np
    from PIL import Image

    from tokenizer.image_io import load_image, resize_square, save_png

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such batch file")
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    r = s.tok.resolution
    mses, bad = [], 0
    for i, ln in enumerate(lines, 1):
        where = f"{path}:{i}"
        try:
            item = json.loads(ln)
            if not isinstance(item, dict) or not isinstance(item.get("input"), list) or "output" not in item:
                raise InputError('each line is {"input": [image paths], "output": "path"}')
            s.prompt = Prompt()
            s.prompt.add_frames(Path(x) for x in item["input"])
            s.check_images(s.prompt.images)
            res = s.generate(1, write=False)
        except (InputError, OSError, json.JSONDecodeError) as e:
            bad += 1
            print_fn(f"skipped {where}: {' '.join(str(e).split())}")
            continue
        gen = res["images"][0][0]
        shown = [resize_square(load_image(x), r, s.tok.resize_mode) for x in item["input"]] + [gen]
        strip = Image.new("RGB", (r * len(shown), r))
        for k, im in enumerate(shown):
            strip.paste(im, (k * r, 0))
        save_png(strip, item["output"])
        msg = f"{where}: wrote {item['output']}"
        if item.get("target"):
            t = np.asarray(resize_square(load_image(item["target"]), r, s.tok.resize_mode), np.float32) / 255
            mse = float(((np.asarray(gen, np.float32) / 255 - t) ** 2).mean())
            mses.append(mse)
            msg += f" (MSE {mse:.4f})"
        print_fn(msg)
    print_fn(f"{len(lines) - bad} generated, {bad} skipped"
             + (f"; mean MSE {np.mean(mses):.4f} over {len(mses)} targets" if mses else ""))
    return 0 if not bad else 1
