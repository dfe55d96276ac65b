"""The `class_groups` source: a class-per-folder tree -> groups of 2/4/8/16 same-class images.

The tree is walked once, at plan time (a class is a top-level folder; images may sit in subfolders of
it), and units carry the image paths.
"""

from __future__ import annotations

import os

from lvm_base.errors import InputError

from ..config import Skip, unit_rng
from ..sequence import MAX_IMAGES
from .base import Source, input_dir, load_square, scan_files


class ClassGroupsSource(Source):
    """ImageNet layout root/class/*.jpg -> 16-image sequences made of 16/g groups of g same-class images."""

    def plan(self):
        root = input_dir(self.cfg.path, "class_groups")
        classes = {}
        for rel in scan_files(root):
            cls, sep, _ = rel.partition("/")
            if sep:  # images straight in the root belong to no class
                classes.setdefault(cls, []).append(os.path.join(str(root), rel))
        if not classes:
            raise InputError(f"{root}: no class folders with images found")
        for g in self.cfg.group_sizes:
            if g not in (1, 2, 4, 8, 16):
                raise InputError(f"class_groups: group size {g} does not divide 16")
        total = sum(len(v) for v in classes.values())
        n = self.cfg.count or max(1, total // MAX_IMAGES)
        names = sorted(classes)
        units = []
        for i in range(n):
            rng = unit_rng(self.data.seed, self.name, i, stream=1)
            g = int(self.cfg.group_sizes[int(rng.integers(len(self.cfg.group_sizes)))])
            groups = []
            for _ in range(MAX_IMAGES // g):
                c = names[int(rng.integers(len(names)))]
                files = classes[c]
                # g images plus spares that replace unreadable ones (with repeats when a class is small)
                idx = rng.permutation(len(files)).tolist()
                while len(idx) < g + 2:
                    idx += rng.permutation(len(files)).tolist()
                groups.append((c, g, [files[j] for j in idx[: g + 2]]))
            units.append(groups)
        return units

    def make(self, unit, rng, seed):
        images, meta_groups, out = [], [], []
        for cls, g, cands in unit:
            got = []
            for path in cands:
                if len(got) == g:
                    break
                try:
                    got.append((path, load_square(path, self.size)))
                except Skip as e:
                    out.append(e)
            if len(got) < g:
                return out + [Skip("class_group_too_few_readable", cls)]
            images += [im for _, im in got]
            meta_groups.append({"class": cls, "paths": [p for p, _ in got]})
        g = unit[0][1]
        return out + [self.seq(images, "class_group", group_size=g, groups=meta_groups,
                               classes=[m["class"] for m in meta_groups])]
