"""Held-out episodes: each task's images, rendered by the built-in renderer from objects never trained on
(`objects.list_objects("heldout")`), deterministic in the suite's seed so every model sees the same data.

    next_view     frames of an orbit (15 deg steps)            -> the next view
    next_frame    frames of a physics video                    -> the next frame
    segmentation  k (rgb, segmentation) pairs + rgb            -> its segmentation
    depth         k (rgb, depth) pairs + rgb                   -> its depth
    colorization  k (gray, rgb) pairs + gray                   -> rgb (one object, one colour per episode)
    inpainting    k (rgb with black boxes, rgb) pairs + query  -> rgb
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lvm.eval.tasks.config import MAX_SHOTS, QUERY, SEQUENTIAL, SuiteConfig
from lvm.eval.tasks.metrics import mean_image
from lvm_base.errors import InputError

MIN_VISIBLE_PIXELS = 16  # a view showing less of its object teaches nothing: it is redrawn
REDRAWS = 20


@dataclass
class Episode:
    """One held-out example. Sequential: `images` = frames (the last one is the target).
    Analogy: `images` = A1, A1', ..., A7, A7', B, B' (MAX_SHOTS example pairs, query, answer)."""

    task: str
    images: list
    hole: np.ndarray | None = None  # inpainting: the target's hidden pixels
    info: dict = field(default_factory=dict)

    def prompt_indices(self, n: int) -> list[int]:
        """Indices into `images` of the prompt with `n` context frames (sequential) or `n` shots (analogy)."""
        if self.task in SEQUENTIAL:
            last = len(self.images) - 1
            return list(range(max(0, last - n), last))
        return list(range(QUERY - 2 * n, QUERY)) + [QUERY]

    def prompt(self, n: int) -> list:
        """The prompt with `n` context frames (sequential) or `n` shots (analogy)."""
        return [self.images[i] for i in self.prompt_indices(n)]

    @property
    def target(self):
        return self.images[-1]

    def baselines(self, n: int) -> dict:
        p = self.prompt(n)
        if self.task in SEQUENTIAL:
            return {"copy_last": p[-1], "copy_last_answer": None, "mean_image": mean_image(p)}
        answers = p[1:-1:2]
        return {"copy_last": p[-1], "copy_last_answer": answers[-1], "mean_image": mean_image(answers)}


def _shows_object(*views) -> bool:
    """Whether every rendered view shows at least MIN_VISIBLE_PIXELS of its object."""
    return all(int(v.mask.sum()) >= MIN_VISIBLE_PIXELS for v in views)


def _analogy(task: str, objs, size: int, rng) -> Episode:
    """MAX_SHOTS example pairs and the query pair of `task`, each on a random held-out object (colorization:
    all on one, in a colour drawn for the episode)."""
    from data_builders import annotations as ann
    from data_builders import render
    from data_builders.objects import random_color

    images, names, hole = [], [], None
    # colorization shows one object in one colour drawn for the episode: the examples carry its colour
    same = (objs[int(rng.integers(len(objs)))], random_color(rng)) if task == "colorization" else None
    for j in range(MAX_SHOTS + 1):
        for _ in range(REDRAWS):
            obj, color = same or (objs[int(rng.integers(len(objs)))], None)
            view = render.render_object_view(obj, seed=int(rng.integers(2**31)), size=size, color=color)
            if _shows_object(view):
                break
        names.append(view.meta["object"])
        if task == "inpainting":
            inp, boxes = ann.inpainting_input(view.rgb, rng)
            pair = (inp, view.rgb)
            if j == MAX_SHOTS:  # the query's boxes are the target's hole
                hole = np.zeros((size, size), bool)
                for x0, y0, x1, y1 in boxes:
                    hole[y0:y1, x0:x1] = True
        else:
            pair = render.task_pair(view, task, rng)
        images += list(pair)
    return Episode(task, images, hole=hole, info={"objects": names})


def _orbit(objs, size: int, seed: int, views: int, rng) -> Episode:
    """An orbit of `views` frames of a random held-out object, redrawn while a frame shows too little of it:
    some meshes render to nothing from some orbits, and a blank orbit's frames are identical, which would
    score copying the last frame at the 100 dB cap and swamp the task's mean."""
    from data_builders import render

    for _ in range(REDRAWS):
        o = render.render_orbit(objs[int(rng.integers(len(objs)))], size=size, seed=seed, views=views)
        if _shows_object(*o["views"]):
            break
        seed = int(rng.integers(2**31))
    return Episode("next_view", o["images"], info={"object": o["object"], "elevation": o["elevation"]})


def make_episodes(cfg: SuiteConfig, size: int) -> dict[str, list[Episode]]:
    """Render the suite's episodes (deterministic in cfg.seed) from held-out objects at `size` px."""
    from data_builders import render
    from data_builders.objects import list_objects

    objs = list_objects("heldout")
    if not objs:
        raise InputError("the renderer has no held-out objects")
    out = {}
    for ti, task in enumerate(cfg.tasks):
        eps = []
        for e in range(cfg.episodes):
            rng = np.random.default_rng([cfg.seed, ti, e])
            seed = int(rng.integers(2**31))
            if task == "next_view":
                eps.append(_orbit(objs, size, seed, cfg.context + 1, rng))
            elif task == "next_frame":
                v = render.render_video(seed=seed, size=size, n_frames=cfg.context + 1, split="heldout")
                eps.append(Episode(task, v["images"], info={"objects": v["meta"]["objects"],
                                                             "scenario": v["meta"]["scenario"]}))
            else:
                eps.append(_analogy(task, objs, size, rng))
        out[task] = eps
    return out
