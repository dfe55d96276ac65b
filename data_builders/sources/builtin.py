"""The `builtin` source: pybullet scenes (orbits, physics videos, task pairs, tuples, annotated videos)."""

from __future__ import annotations

import numpy as np

from lvm_base.errors import InputError

from ..sequence import MAX_IMAGES
from .base import Source, sequence_layout


class BuiltinSource(Source):
    DEFAULT_KINDS = {"multiview": 0.3, "video": 0.25, "pairs": 0.2, "tuples": 0.05, "annotated_video": 0.1,
                     "single": 0.05, "class_group": 0.05}

    def __init__(self, cfg, data):
        super().__init__(cfg, data)
        weights = cfg.kinds or self.DEFAULT_KINDS
        bad = set(weights) - set(self.DEFAULT_KINDS)
        if bad:
            raise InputError(f"builtin source: unknown kinds {sorted(bad)}; valid: {sorted(self.DEFAULT_KINDS)}")
        self.kinds = sorted(weights)
        w = np.array([float(weights[k]) for k in self.kinds])
        self.p = w / w.sum()
        from .. import render

        self.tasks = list(cfg.tasks or render.TASKS)
        bad = set(self.tasks) - set(render.TASKS)
        if bad:
            raise InputError(f"builtin source: unknown tasks {sorted(bad)}; valid: {list(render.TASKS)}")
        extra = set(cfg.task_weights) - set(self.tasks)
        if extra:
            raise InputError(f"builtin source: task_weights names tasks not in `tasks`: {sorted(extra)}")
        tw = np.array([float(cfg.task_weights.get(t, 1.0)) for t in self.tasks])
        if (tw < 0).any() or tw.sum() <= 0:
            raise InputError(f"builtin source: task_weights must be >= 0 with a positive sum, got {cfg.task_weights}")
        self.task_p = tw / tw.sum()
        if cfg.orbit_direction not in ("forward", "both"):
            raise InputError(f"builtin source: orbit_direction must be forward or both, got {cfg.orbit_direction!r}")

    def plan(self):
        return list(range(self.cfg.count or 1000))

    def _objects(self):
        from ..objects import list_objects

        return list_objects(self.cfg.split)

    def make(self, unit, rng, seed):
        from .. import render
        from ..objects import random_color

        kind = self.kinds[int(rng.choice(len(self.kinds), p=self.p))]
        objs = self._objects()
        pick = lambda: objs[int(rng.integers(len(objs)))]  # noqa: E731
        sz, split = self.size, self.cfg.split
        if kind == "multiview":
            step = self.cfg.step_deg
            if self.cfg.orbit_direction == "both" and rng.random() < 0.5:
                step = -step
            o = render.render_orbit(pick(), size=sz, seed=seed, views=self.cfg.views, step_deg=step)
            return [self.seq(o["images"], "multiview", object=o["object"], split=split, azimuths=o["azimuths"],
                             elevation=o["elevation"], radius=o["radius"], step_deg=step)]
        if kind == "video":
            v = render.render_video(seed=seed, size=sz, n_frames=self.cfg.n_frames, split=split)
            return [self.seq(v["images"], "video", split=split, frames=list(range(len(v["images"]))), **v["meta"])]
        if kind == "single":
            v = render.render_object_view(pick(), seed=seed, size=sz)
            return [self.seq([v.rgb], "single", object=v.meta["object"], split=split)]
        if kind == "class_group":  # "class" = object: g random views/scenes of one object per group
            g = int(self.cfg.group_sizes[int(rng.integers(len(self.cfg.group_sizes)))])
            images, groups = [], []
            for _ in range(MAX_IMAGES // g):
                o = pick()
                images += [render.render_object_view(o, seed=int(rng.integers(2**31)), size=sz).rgb for _ in range(g)]
                groups.append({"class": o.name})
            return [self.seq(images, "class_group", group_size=g, groups=groups,
                             classes=[x["class"] for x in groups], split=split)]
        if kind == "pairs":
            task = self.tasks[int(rng.choice(len(self.tasks), p=self.task_p))]
            images, names = [], []
            # colorization: one object in one colour drawn for the sequence, so its earlier pairs show the
            # answer's colour (a colour tied to the object's name could not be read from a held-out prompt)
            same = (pick(), random_color(rng)) if task == "colorization" else None
            for j in range(self.cfg.pairs_per_sequence):
                obj, color = same or (pick(), None)
                v = render.render_object_view(obj, seed=int(rng.integers(2**31)), size=sz, color=color)
                images += render.task_pair(v, task, rng)
                names.append(v.meta["object"])
            return [self.seq(images, "pairs", task=task, objects=names, split=split, tuple_size=2)]
        if kind == "tuples":
            k = int(rng.integers(1, len(render.ANNOTATIONS) + 1))
            anns = sorted(rng.choice(render.ANNOTATIONS, size=k, replace=False).tolist(),
                          key=render.ANNOTATIONS.index)
            images, names = [], []
            for j in range(MAX_IMAGES // (k + 1)):
                v = render.render_object_view(pick(), seed=int(rng.integers(2**31)), size=sz)
                images += [v.rgb] + [render.annotation_image(v, a) for a in anns]
                names.append(v.meta["object"])
            return [self.seq(images, "tuples", annotations=anns, tuple_size=k + 1, objects=names, split=split)]
        # annotated_video
        n = MAX_IMAGES // 2
        a = render.ANNOTATIONS[int(rng.integers(len(render.ANNOTATIONS)))]
        layout = self.cfg.layouts[int(rng.integers(len(self.cfg.layouts)))]
        v = render.render_video(seed=seed, size=sz, n_frames=n, split=split)
        annots = [render.annotation_image(view, a) for view in v["views"]]
        return [self.seq(sequence_layout(v["images"], annots, layout), "annotated_video", annotation=a, layout=layout,
                         split=split, frames=list(range(n)), **v["meta"])]
