"""The `multiview_folder` source: folders of views rendered elsewhere (name order = orbit order)."""

from __future__ import annotations

from lvm_base.errors import InputError
from lvm_base.image_io import list_images

from ..config import Skip
from .base import Source, input_dir, is_frame_dir, load_square


class MultiviewFolderSource(Source):
    """root/object/*.png rendered elsewhere, names sorted = orbit order; `views` consecutive from a random start."""

    def plan(self):
        root = input_dir(self.cfg.path, "multiview_folder")
        dirs = sorted(str(d) for d in root.rglob("*") if is_frame_dir(d))
        if not dirs:
            raise InputError(f"{root}: no folders of view images found")
        return [(d, k) for d in dirs for k in range(self.cfg.orbits_per_object)]

    def make(self, unit, rng, seed):
        d, k = unit
        files = list_images(d)
        if len(files) < 2:
            raise Skip("multiview_too_few_views", d)
        n = min(self.cfg.views, len(files))
        start = int(rng.integers(len(files)))
        idx = [(start + i) % len(files) for i in range(n)]
        images = []
        for i in idx:
            images.append(load_square(files[i], self.size))
        step = 360.0 / len(files)
        return [self.seq(images, "multiview", paths=[str(files[i]) for i in idx], view_indices=idx,
                         azimuths=[i * step for i in idx], orbit_views=len(files), orbit=k)]
