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

from lvm_base.files import atomic_write_text
from lvm_base.image_io import save_png

SIZE = 128
SHOTS = 3  # example pairs per analogy prompt


def _write(root: Path, name: str, spec: dict, images: dict) -> Path:
    for rel, img in images.items():
        save_png(img, root / name / rel)
    path = root / f"{name}.yaml"
    atomic_write_text(path, yaml.safe_dump(spec, sort_keys=False))
    return path


def _ordinal(k: int) -> str:
    return f"{k}" + ("th" if 10 <= k % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th"))


def _sequential(root, name, frames, description, context, n_new):
    imgs = {f"{i:02d}.png": im for i, im in enumerate(frames[: context + n_new])}
    names = [f"{name}/{k}" for k in imgs]
    spec = {"mode": "sequential", "description": description, "images": names[:context], "n": n_new,
            "target": names[context:]}
    return _write(root, name, spec, imgs)


def _analogy(root, name, task, objects, description, seed, size, shots):
    from data_builders import render
    from data_builders.objects import random_color

    rng = np.random.default_rng(seed)
    imgs, pairs = {}, []
    # colorization shows one object in one colour, so the examples carry the answer's colour (docs/tasks.md)
    same = (objects[0], random_color(rng)) if task == "colorization" else None
    for k in range(shots + 1):
        obj, color = same or (objects[k % len(objects)], None)
        view = render.render_object_view(obj, seed=seed + k, size=size, color=color)
        a, b = render.task_pair(view, task, rng)
        imgs[f"{k}_in.png"], imgs[f"{k}_out.png"] = a, b
        pairs.append([f"{name}/{k}_in.png", f"{name}/{k}_out.png"])
    spec = {"mode": "analogy", "description": description, "pairs": pairs[:shots], "query": pairs[shots][0],
            "target": [pairs[shots][1]]}
    return _write(root, name, spec, imgs)


ANALOGIES = [("segmentation", "rgb -> segmentation map"), ("depth", "rgb -> depth map"),
             ("colorization", "grayscale -> color of one object"), ("inpainting", "image with black boxes -> original")]
NAMES = ["rotation", "video"] + [task for task, _ in ANALOGIES]


def make_example_prompts(root: str | Path = "prompts", size: int = SIZE, context: int = 7, n_new: int = 1,
                         shots: int = SHOTS, names=None) -> list[Path]:
    """Write the example prompts `names` (default: all of NAMES) under `root`: `context` frames and `n_new`
    to generate (sequential), `shots` example pairs (analogies), images of `size` px. The defaults make the
    prompts shipped in prompts/."""
    from data_builders import render
    from data_builders.objects import list_objects

    root = Path(root)
    names = set(NAMES if names is None else names)
    if names - set(NAMES):
        raise ValueError(f"unknown example prompts {sorted(names - set(NAMES))} (known: {NAMES})")
    held = list_objects("heldout")
    if not held:
        raise RuntimeError("the renderer has no held-out objects")
    named = [o for o in held if not o.name.startswith("random_")]
    pick = (named + [o for o in held if o.name.startswith("random_")])[: shots + 1]
    upto = f"the {_ordinal(context + 1)}" if n_new == 1 else f"the next {n_new}"
    out = []
    if "rotation" in names:
        orbit = render.render_orbit(pick[0], size=size, seed=1, views=context + n_new, step_deg=15.0)
        out.append(_sequential(root, "rotation", orbit["images"], f"held-out object '{orbit['object']}' turning "
                               f"15 deg per view: {context} views -> {upto}", context, n_new))
    if "video" in names:
        video = render.render_video(seed=3, size=size, n_frames=context + n_new, split="heldout",
                                    scenario="drop", moving_camera=False)
        out.append(_sequential(root, "video", video["images"],
                               f"physics clip ({video['meta']['scenario']}, {', '.join(video['meta']['objects'])}): "
                               f"{context} frames -> {upto}", context, n_new))
    for i, (task, desc) in enumerate(ANALOGIES):
        if task in names:
            out.append(_analogy(root, task, task, pick, f"{desc}: {shots} example pairs, then the query",
                                10 + 10 * i, size, shots))
    return out


if __name__ == "__main__":
    for p in make_example_prompts(sys.argv[1] if len(sys.argv) > 1 else "prompts"):
        print(p)
