"""The `annotate` source: annotations the builder draws itself from images (+ label / depth maps, JSON).

The image tree and the side folders a task needs (labels, depth, JSON) are walked once, at plan time
(recursive, so mirrored trees such as ImageNet's class folders match by relative path); every unit carries
the resolved paths, so a worker never lists a folder. Label maps are read as class = value + label_offset
(or a `label_preset`), `ignore_index` pixels drawn in `ignore_color`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from lvm_base.errors import InputError
from lvm_base.image_io import resize_square

from .. import annotations as ann
from ..config import DataConfig, Skip, SourceConfig
from ..sequence import MAX_IMAGES
from .base import (SIDE_EXTENSIONS, Source, check_partners, check_stem_templates, chunks, input_dir, load_rgb,
                   read_array, side_index, stem_index, stem_rule, warn_index)


DEFAULT_TASKS = ["edges", "colorization", "inpainting"]


class Side(NamedTuple):
    """The side file one task of one image reads: `path` None when the image has none."""

    stem: str
    folder: str
    path: str | None


def _missing(side: Side, task: str):
    return Skip("pair_missing_side", f"{side.stem} (no {task} file in {side.folder})")


def _side_map(side: Side, task: str, img: Image.Image) -> np.ndarray:
    """The 2-D label or depth map of `side`, checked against the image's size."""
    if side.path is None:
        raise _missing(side, task)
    try:
        arr = read_array(side.path)
    except (OSError, ValueError, SyntaxError):
        raise Skip("annotation_corrupt", side.path) from None
    if arr.ndim == 3:
        arr = arr[..., 0]
    if arr.shape != (img.size[1], img.size[0]):
        raise Skip("annotation_size_mismatch", side.path)
    return arr


def _side_json(side: Side, task: str) -> dict:
    """A JSON side file: {"boxes": [[x0,y0,x1,y1,label]], "keypoints": [[[x,y,v]...]]}."""
    if side.path is None:
        raise _missing(side, task)
    try:
        return json.loads(Path(side.path).read_text())
    except (OSError, json.JSONDecodeError):
        raise Skip("annotation_corrupt", side.path) from None


# One function per task: (source, side file, image, rng) -> (input, target) images, resized to the output size
# later. SIDE: the config field naming the folder of a task's side files, and their extensions.
def _edges(src, side, img, rng):
    return img, ann.edges_image(img)


def _colorization(src, side, img, rng):
    return ann.colorization_input(img), img


def _inpainting(src, side, img, rng):
    img = resize_square(img, src.size)  # boxes drawn at the output size
    return ann.inpainting_input(img, rng)[0], img


def _segmentation(src, side, img, rng):
    ids = ann.label_ids(_side_map(side, "segmentation", img), *src.label_settings)
    return img, ann.segmentation_image(ids, src.cfg.ignore_color)


def _depth(src, side, img, rng):
    depth = _side_map(side, "depth", img).astype(np.float64)
    return img, ann.depth_image(depth, depth > 0)


def _normals(src, side, img, rng):
    depth = _side_map(side, "normals", img).astype(np.float64)
    mask = depth > 0
    filled = np.where(mask, depth, depth[mask].max() if mask.any() else 1)
    return img, ann.normals_image(ann.normals_from_depth(filled, src.cfg.fov_deg), mask)


def _drawn_json(side: Side, task: str, draw, img):
    """`draw(img, the JSON's list under `task`)`; a malformed list is a skipped item, not a failed shard."""
    try:
        return draw(img, _side_json(side, task).get(task, []))
    except (TypeError, ValueError, IndexError, KeyError):
        raise Skip("annotation_corrupt", f"{side.path} ({task})") from None


def _boxes(src, side, img, rng):
    return img, _drawn_json(side, "boxes", ann.draw_box_list, img)


def _keypoints(src, side, img, rng):
    return img, _drawn_json(side, "keypoints", ann.draw_coco_people, img)


FLAT_TASKS = ("segmentation",)  # targets that are flat palette maps

DRAW = {"edges": _edges, "colorization": _colorization, "inpainting": _inpainting, "segmentation": _segmentation,
        "depth": _depth, "normals": _normals, "boxes": _boxes, "keypoints": _keypoints}
ANNOTATE_TASKS = tuple(DRAW)
SIDE = {"segmentation": ("labels_dir", SIDE_EXTENSIONS), "depth": ("depth_dir", SIDE_EXTENSIONS),
        "normals": ("depth_dir", SIDE_EXTENSIONS), "boxes": ("json_dir", (".json",)),
        "keypoints": ("json_dir", (".json",))}


class AnnotateSource(Source):
    """Annotations drawn by the builder from images (+ label maps / depth maps / JSON where a task needs them):
    pairs of one task, or (tuples: true) (image, a1..ak) tuples, or random m-subsets (tuple_subsets: true)."""

    def __init__(self, cfg: SourceConfig, data: DataConfig):
        super().__init__(cfg, data)
        try:
            self.label_settings = ann.label_settings(cfg.label_preset, cfg.label_offset, cfg.ignore_index)
        except ValueError as e:
            raise InputError(f"annotate source {self.name!r}: {e}") from None

    def tasks(self) -> list[str]:
        return list(self.cfg.tasks or DEFAULT_TASKS)

    def plan(self):
        """Units (task, [(stem, image path, {side folder: path or None})])."""
        root = input_dir(self.cfg.path, "annotate")
        tasks = self.tasks()
        bad = set(tasks) - set(ANNOTATE_TASKS)
        if bad:
            raise InputError(f"annotate source: unknown tasks {sorted(bad)}; valid: {list(ANNOTATE_TASKS)}")
        self.check_tuples()
        folders = {getattr(self.cfg, f) for f, _ in SIDE.values()}
        check_stem_templates(self.cfg, folders | {self.cfg.image_dir})
        img_dir = self._image_dir()
        # images straight in `path`: its side folders are not images
        imgs = stem_index(img_dir, stem_rule(self.cfg, self.cfg.image_dir), skip_top=folders if img_dir == root else ())
        if not imgs.paths:
            raise InputError(f"{img_dir}: no images found for the annotate source")
        warn_index(imgs)
        sides = {}
        for t in tasks:
            folder, ext = self._side(t)
            if folder and folder not in sides:
                sides[folder] = side_index(root, folder, self.cfg, f"{t} ({SIDE[t][0]})", ext)
                check_partners(imgs, sides[folder])
        stems = sorted(imgs.paths)

        def item(s, unit_tasks):
            need = {self._side(t)[0] for t in unit_tasks} - {None}
            return s, imgs.paths[s], {f: sides[f].paths.get(s) for f in sorted(need)}

        if self.cfg.tuples:
            per = max(1, MAX_IMAGES // (len(tasks) + 1))
            return [("tuples", [item(s, tasks) for s in c]) for c in chunks(stems, per)]
        return [(task, [item(s, [task]) for s in c]) for task, c in self.task_units(stems, tasks)]

    def _side(self, task: str) -> tuple[str | None, tuple]:
        if task not in SIDE:
            return None, ()
        field, ext = SIDE[task]
        return getattr(self.cfg, field), ext

    def _image_dir(self) -> Path:
        root = Path(self.cfg.path)
        return root / self.cfg.image_dir if (root / self.cfg.image_dir).is_dir() else root

    def _draw(self, task: str, stem: str, sides: dict, img: Image.Image, rng) -> tuple[Image.Image, Image.Image]:
        folder = self._side(task)[0]
        side = Side(stem, str(Path(self.cfg.path) / folder) if folder else "", sides.get(folder))
        a, b = DRAW[task](self, side, img, rng)
        # A label map's palette colours stay exact (no blended edge colours that name no class).
        resample = Image.Resampling.NEAREST if task in FLAT_TASKS else Image.Resampling.BICUBIC
        return resize_square(a, self.size), resize_square(b, self.size, resample=resample)

    def make(self, unit, rng, seed):
        task, items = unit
        tasks = self.tasks() if task == "tuples" else [task]
        images, used, picked, out = [], [], [], []
        for stem, img_path, sides in items:
            pick = [tasks[j] for j in self.tuple_pick(rng, len(tasks))] if task == "tuples" else tasks
            try:
                img = load_rgb(img_path)
            except Skip as e:
                out.append(e)
                continue
            try:
                pairs = [self._draw(t, stem, sides, img, rng) for t in pick]
            except Skip as e:
                out.append(e)
                continue
            if task == "tuples":  # (image, a1, ..., ak): the image as it is, then each task's target
                images += [resize_square(img, self.size)] + [b for _, b in pairs]
            else:
                images += list(pairs[0])
            used.append(stem)
            picked.append(pick)
        return self.pairs_result(out, images, used, task, tasks, picked=picked)
