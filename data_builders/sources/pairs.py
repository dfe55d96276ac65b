"""The `pairs` source: paired folders {path}/{image_dir}/x.* + {path}/{task}/x.*, as pairs or tuples.

Both trees are walked once, at plan time (recursive: {image_dir}/a/x.* pairs with {task}/a/x.*), and every
unit carries the resolved paths of its files, so a worker never lists a folder: the cost of an item does not
grow with the folder. File names may differ by a per-folder template (`stem_templates`, "rain-{stem}"; keyed
by `image_dir` and by task name) or one regex (`stem_regex`, named group `stem`). A task's folder is
`task_dirs[task]`, default the task's name; it may be `image_dir` itself (SIDD: NOISY_SRGB_010.PNG beside
GT_SRGB_010.PNG in each scene folder, told apart by their templates).
"""

from __future__ import annotations

from lvm_base.errors import InputError

from ..config import Skip
from ..sequence import MAX_IMAGES
from .base import (Source, check_partners, check_stem_templates, input_dir, load_square, side_index, stem_index,
                   stem_rule, warn_index)


class PairsSource(Source):
    """{path}/{image_dir}/x.* paired with {path}/{task}/x.* (same stem): 8 pairs of one task per sequence,
    or (tuples: true) each image with all its k annotations as (k+1)-tuples, 16 // (k+1) per sequence
    (tuple_subsets: true: each image with a random m - 1 of its k annotations)."""

    def plan(self):
        """Units (task, [(stem, image path, [partner path or None per task of the unit])])."""
        root = input_dir(self.cfg.path, "pairs")
        tasks = self.cfg.tasks
        if not tasks:
            raise InputError("pairs source: list the annotation folders in `tasks`")
        self.check_tuples()
        check_stem_templates(self.cfg, [self.cfg.image_dir, *tasks])
        img_dir = root / self.cfg.image_dir
        if not img_dir.is_dir():
            raise InputError(f"{img_dir}: the pairs source's image folder (image_dir) does not exist")
        imgs = stem_index(img_dir, stem_rule(self.cfg, self.cfg.image_dir))
        if not imgs.paths:
            raise InputError(f"{img_dir}: no input images found for the pairs source")
        dirs = {t: self.cfg.task_dirs.get(t, t) for t in tasks}
        shared = self.cfg.image_dir in dirs.values()  # both sides in one folder, told apart by their names
        warn_index(imgs, shared)
        anns = {t: side_index(root, dirs[t], self.cfg, f"'{t}' annotation", rule_key=t) for t in tasks}
        for t in tasks:
            check_partners(imgs, anns[t], shared=shared)
        stems = sorted(imgs.paths)

        def item(s, unit_tasks):
            return s, imgs.paths[s], [anns[t].paths.get(s) for t in unit_tasks]

        if self.cfg.tuples:
            per = max(1, MAX_IMAGES // (len(tasks) + 1))
            return [("tuples", [item(s, tasks) for s in c]) for c in self.shuffled_chunks(stems, 0, per)]
        return [(task, [item(s, [task]) for s in c]) for task, c in self.task_units(stems, tasks)]

    def make(self, unit, rng, seed):
        task, items = unit
        tasks = self.cfg.tasks if task == "tuples" else [task]
        images, used, picked, paths, out = [], [], [], [], []
        for stem, img, sides in items:
            pick = self.tuple_pick(rng, len(tasks)) if task == "tuples" else [0]
            miss = [tasks[j] for j in pick if sides[j] is None]
            if miss:
                out.append(Skip("pair_missing_side", f"{stem} (missing {', '.join(miss)})"))
                continue
            try:
                group = [load_square(img, self.size)] + [load_square(sides[j], self.size) for j in pick]
            except Skip as e:
                out.append(e)
                continue
            images += group
            used.append(stem)
            picked.append([tasks[j] for j in pick])
            paths.append([img] + [sides[j] for j in pick])
        return self.pairs_result(out, images, used, task, tasks, picked=picked,
                                 paths=[] if task == "tuples" else paths)
