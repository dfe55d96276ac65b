"""The `pairs` source: paired folders {path}/{image_dir}/x.* + {path}/{task}/x.*, as pairs or tuples."""

from __future__ import annotations

from pathlib import Path

from tokenizer.common.errors import InputError

from ..config import Skip
from ..sequence import MAX_IMAGES
from .base import Source, by_stem, input_dir, load_square


class PairsSource(Source):
    """{path}/{image_dir}/x.* paired with {path}/{task}/x.* (same stem): 8 pairs of one task per sequence,
    or (tuples: true) each image with all its k annotations as (k+1)-tuples, 16 // (k+1) per sequence."""

    def plan(self):
        root = input_dir(self.cfg.path, "pairs")
        if not self.cfg.tasks:
            raise InputError("pairs source: list the annotation folders in `tasks`")
        imgs = by_stem(root / self.cfg.image_dir)
        if not imgs:
            raise InputError(f"{root / self.cfg.image_dir}: no input images found for the pairs source")
        stems = sorted(imgs)
        if self.cfg.tuples:
            per = max(1, MAX_IMAGES // (len(self.cfg.tasks) + 1))
            return [("tuples", c) for c in self.shuffled_chunks(stems, 0, per)]
        return self.task_units(stems, self.cfg.tasks)

    def make(self, unit, rng, seed):
        root = Path(self.cfg.path)
        task, stems = unit
        imgs = by_stem(root / self.cfg.image_dir)
        tasks = self.cfg.tasks if task == "tuples" else [task]
        anns = {t: by_stem(root / t) for t in tasks}
        images, used, out = [], [], []
        for s in stems:
            miss = [t for t in tasks if s not in anns[t]]
            if s not in imgs or miss:
                out.append(Skip("pair_missing_side", f"{s} (missing {', '.join(miss) or self.cfg.image_dir})"))
                continue
            try:
                group = [load_square(imgs[s], self.size)] + [load_square(anns[t][s], self.size) for t in tasks]
            except Skip as e:
                out.append(e)
                continue
            images += group
            used.append(s)
        paths = [] if task == "tuples" else [[str(imgs[s]), str(anns[task][s])] for s in used]
        return self.pairs_result(out, images, used, task, tasks, paths=paths)
