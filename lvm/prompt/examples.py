"""Make the example prompts in prompts/ with the project's own renderer (pybullet, held-out objects).

    python -m lvm.prompt.examples prompts/      # rewrites prompts/*.yaml and prompts/<name>/*.png

Every prompt is deterministic (fixed seeds) and uses objects of the renderer's held-out split, so a model
trained on the built-in data source has never seen them. Images are 128 px PNGs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import yaml

from tokenizer.common.files import atomic_write_text
from tokenizer.image_io import save_png

SIZE = 128
SHOTS = 3  # example pairs per analogy prompt


def _write(root: Path, name: str, spec: dict, images: dict) -> Path:
    for rel, img in images.items():
        save_png(img, root / name / rel)
    path = root / f"{name}.yaml"
    atomic_write_text(path, yaml.safe_dump(spec, sort_keys=False))
    return path


def _sequential(root, name, frames, description, n_context=7):
    imgs = {f"{i:02d}.png": im for i, im in enumerate(frames[: n_context + 1])}
    names = [f"{name}/{k}" for k in imgs]
    spec = {"mode": "sequential", "description": description, "images": names[:n_context], "n": 1,
            "target": [names[n_context]]}
    return _write(root, name, spec, imgs)


def _analogy(root, name, task, objects, description, seed):
    from data_builders import render

    rng = np.random.default_rng(seed)
    imgs, pairs = {}, []
    for k, obj in enumerate(objects[: SHOTS + 1]):
        view = render.render_object_view(obj, seed=seed + k, size=SIZE)
        a, b = render.task_pair(view, task, rng)
        imgs[f"{k}_in.png"], imgs[f"{k}_out.png"] = a, b
        pairs.append([f"{name}/{k}_in.png", f"{name}/{k}_out.png"])
    spec = {"mode": "analogy", "description": description, "pairs": pairs[:SHOTS], "query": pairs[SHOTS][0],
            "target": [pairs[SHOTS][1]]}
    return _write(root, name, spec, imgs)


def make_example_prompts(root: str | Path = "prompts") -> list[Path]:
    from data_builders import render

    root = Path(root)
    held = render.list_objects("heldout")
    if len(held) < SHOTS + 1:
        raise RuntimeError(f"the renderer has only {len(held)} held-out objects")
    named = [o for o in held if not o.name.startswith("random_")]
    pick = (named + [o for o in held if o.name.startswith("random_")])[: SHOTS + 1]
    out = []
    orbit = render.render_orbit(pick[0], size=SIZE, seed=1, views=8, step_deg=15.0)
    out.append(_sequential(root, "rotation", orbit["images"],
                           f"held-out object '{orbit['object']}' turning 15 deg per view: 7 views -> the 8th"))
    video = render.render_video(seed=3, size=SIZE, n_frames=8, split="heldout", scenario="drop",
                                moving_camera=False)
    out.append(_sequential(root, "video", video["images"],
                           f"physics clip ({video['meta']['scenario']}, {', '.join(video['meta']['objects'])}): "
                           "7 frames -> the 8th"))
    for i, (task, desc) in enumerate([
        ("segmentation", "rgb -> segmentation map"), ("depth", "rgb -> depth map"),
        ("colorization", "grayscale -> color"), ("inpainting", "image with black boxes -> original"),
    ]):
        out.append(_analogy(root, task, task, pick, f"{desc}: {SHOTS} example pairs, then the query", 10 + 10 * i))
    return out


if __name__ == "__main__":
    for p in make_example_prompts(sys.argv[1] if len(sys.argv) > 1 else "prompts"):
        print(p)
