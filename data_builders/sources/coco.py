"""The `coco` source: COCO's instances / person_keypoints JSON drawn as boxes, instance and semantic masks, pose.

Layout: `{path}/{image_dir}/{file_name}` (e.g. train2017/) and the JSON files `instances_json` /
`keypoints_json` (relative to `path`; default `annotations/instances_{image_dir}.json` and
`annotations/person_keypoints_{image_dir}.json` where they exist). The JSON is read once, at plan time, with
pycocotools; every unit carries the file names, sizes and the annotations its task draws, so workers never
load the index (COCO train2017's instances JSON takes ~20 s and ~1-2 GB to index, per spawned worker or
Ray task). Tasks:

  boxes           bbox [x, y, w, h] drawn as a box over the image, one colour per category
  instance_masks  every instance's polygon / RLE mask, a colour per instance, over black
  semantic_masks  every mask (crowd RLE included) in its category's colour, over black
  pose            person keypoints on black: OpenPose BODY_18 (`pose_layout: openpose18`) or COCO-17 (`coco17`)

A category's colour is the palette colour of its position in the sorted category ids (`segmentation_image`
of that position), the same in every image and task. Crowd annotations (iscrowd = 1) are regions of many
objects, not one: they are left out of boxes and instance masks. Images with nothing to draw for a task are
not planned for it; all drawing is at the image's own size, then both images are cropped to the square.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
from PIL import Image

from lvm_base.errors import InputError
from lvm_base.image_io import resize_square

from .. import annotations as ann
from ..config import Skip
from ..sequence import MAX_IMAGES
from .base import Source, input_dir, load_rgb

INSTANCE_TASKS = ("boxes", "instance_masks", "semantic_masks")
FLAT_TASKS = ("instance_masks", "semantic_masks")  # targets that are flat palette maps
COCO_TASKS = INSTANCE_TASKS + ("pose",)
POSE_LAYOUTS = ("openpose18", "coco17")


def load_coco(path: Path, what: str):
    """The pycocotools index of `path`; a missing or malformed file is a one-line InputError."""
    from pycocotools.coco import COCO

    if not path.is_file():
        raise InputError(f"{path}: {what} JSON not found")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints its progress
            return COCO(str(path))
    except (OSError, ValueError, AssertionError, KeyError, TypeError, AttributeError) as e:
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise InputError(f"{path}: not a COCO annotation JSON ({type(e).__name__}: {reason})") from None


def segm_mask(segm, h: int, w: int) -> np.ndarray:
    """Boolean (h, w) mask of a COCO segmentation (polygons, uncompressed or compressed RLE), as
    COCO.annToMask computes it."""
    from pycocotools import mask as mask_utils

    try:
        if isinstance(segm, list):
            rle = mask_utils.merge(mask_utils.frPyObjects(segm, h, w))
        elif isinstance(segm.get("counts"), list):
            rle = mask_utils.frPyObjects(segm, h, w)
        else:
            rle = segm
        m = mask_utils.decode(rle)
    except Exception as e:  # pycocotools raises bare Exception for inputs it does not support
        raise ValueError(f"bad segmentation ({e})") from None
    if m.shape[:2] != (h, w):
        raise ValueError(f"segmentation of size {m.shape[:2]} in a {h}x{w} image")
    return m.astype(bool)


def id_map(items, h: int, w: int) -> np.ndarray:
    """Class-id map (h, w) of (id, segmentation) items painted in order over background (-1)."""
    ids = np.full((h, w), -1, np.int64)
    for i, segm in items:
        ids[segm_mask(segm, h, w)] = i
    return ids


# Plan time: one function per task, a COCO image's annotations -> what make() draws (None = nothing).
def _by_area(anns):
    # Largest first, so that smaller objects are painted over the ones they lie on.
    return sorted(anns, key=lambda a: -float(a.get("area", 0) or 0))


def _plan_boxes(anns, pos):
    out = [(pos[a["category_id"]], [float(v) for v in a["bbox"]]) for a in anns
           if not a.get("iscrowd") and len(a.get("bbox") or ()) == 4 and min(a["bbox"][2:]) > 0]
    return out or None


def _plan_instances(anns, pos):
    return [a["segmentation"] for a in _by_area(anns) if not a.get("iscrowd") and a.get("segmentation")] or None


def _plan_semantic(anns, pos):
    return [(pos[a["category_id"]], a["segmentation"]) for a in _by_area(anns) if a.get("segmentation")] or None


def _plan_pose(anns, pos):
    people = [a["keypoints"] for a in anns if len(a.get("keypoints") or ()) == 51
              and any(v > 0 for v in a["keypoints"][2::3])]
    return people or None


# make(): one function per task, (image, planned data, pose layout) -> the annotation image.
def _draw_boxes(img, boxes, layout):
    return ann.draw_boxes(img, [[x, y, x + w, y + h] for _, (x, y, w, h) in boxes], [lab for lab, _ in boxes])


def _draw_instances(img, segms, layout):
    return ann.segmentation_image(id_map(enumerate(segms), img.size[1], img.size[0]))


def _draw_semantic(img, items, layout):
    return ann.segmentation_image(id_map(items, img.size[1], img.size[0]))


def _draw_pose(img, people, layout):
    canvas = Image.new("RGB", img.size)
    if layout == "coco17":
        return ann.draw_coco_people(canvas, people)
    return ann.draw_openpose(canvas, [ann.openpose_keypoints(kps) for kps in people])


PLAN = {"boxes": _plan_boxes, "instance_masks": _plan_instances, "semantic_masks": _plan_semantic,
        "pose": _plan_pose}
DRAW = {"boxes": _draw_boxes, "instance_masks": _draw_instances, "semantic_masks": _draw_semantic,
        "pose": _draw_pose}


class CocoSource(Source):
    """COCO images paired with their boxes / instance masks / semantic masks / pose drawn as images:
    `pairs_per_sequence` pairs of one task per sequence, or (tuples: true) (image, a1..ak) tuples
    (`tuple_subsets`: a random subset of the k annotations per image)."""

    def _json(self, field: str, default: str) -> Path | None:
        """The JSON of `field` (config value, else the COCO default name if that file exists)."""
        root, given = Path(self.cfg.path), getattr(self.cfg, field)
        if given:
            return root / given
        guess = root / "annotations" / default.format(self.cfg.image_dir)
        return guess if guess.is_file() else None

    def _tasks(self, inst: Path | None, kp: Path | None) -> list[str]:
        tasks = self.cfg.tasks or [t for t in COCO_TASKS if (kp if t == "pose" else inst)]
        bad = [t for t in tasks if t not in COCO_TASKS]
        if bad:
            raise InputError(f"coco source: unknown tasks {bad}; valid: {list(COCO_TASKS)}")
        if not tasks:
            raise InputError(f"{self.cfg.path}: coco source found no annotations/instances_{self.cfg.image_dir}.json "
                             f"or person_keypoints_{self.cfg.image_dir}.json; set instances_json / keypoints_json")
        for t in tasks:
            if (kp if t == "pose" else inst) is None:
                need = "keypoints_json" if t == "pose" else "instances_json"
                raise InputError(f"coco source: task {t!r} needs `{need}` (a COCO JSON under {self.cfg.path})")
        return list(tasks)

    def plan(self):
        root = input_dir(self.cfg.path, "coco")
        if self.cfg.pose_layout not in POSE_LAYOUTS:
            raise InputError(f"coco source: pose_layout must be one of {list(POSE_LAYOUTS)}, "
                             f"got {self.cfg.pose_layout!r}")
        inst = self._json("instances_json", "instances_{}.json")
        kp = self._json("keypoints_json", "person_keypoints_{}.json")
        tasks = self._tasks(inst, kp)
        self.check_tuples()
        if not (root / self.cfg.image_dir).is_dir():
            raise InputError(f"{root / self.cfg.image_dir}: coco images folder (image_dir) does not exist")
        images, data = {}, {}
        for path, what, mine in ((inst, "instances", [t for t in tasks if t != "pose"]),
                                 (kp, "person_keypoints", [t for t in tasks if t == "pose"])):
            if mine:
                coco = load_coco(path, what)
                images.update(self._images(coco, path))
                data.update(self._annotations(coco, path, mine))
        return self._units(tasks, images, data)

    @staticmethod
    def _images(coco, path: Path) -> dict:
        """image id -> (file_name, width, height)."""
        out = {}
        for i, im in coco.imgs.items():
            try:
                out[i] = (str(im["file_name"]), int(im["width"]), int(im["height"]))
            except (KeyError, TypeError, ValueError):
                raise InputError(f"{path}: image {i} lacks a file_name, width or height") from None
        if not out:
            raise InputError(f"{path}: the COCO JSON lists no images")
        return out

    @staticmethod
    def _annotations(coco, path: Path, tasks: list) -> dict:
        """task -> {image id: planned data} over the images that have something to draw."""
        try:
            pos = {c: i for i, c in enumerate(sorted(coco.cats))}
        except TypeError:
            raise InputError(f"{path}: category ids must be numbers, got {list(coco.cats)[:5]}") from None
        unknown = {a.get("category_id") for a in coco.anns.values()} - set(pos)
        if unknown and tasks != ["pose"]:
            raise InputError(f"{path}: annotations use category ids missing from `categories`: "
                             f"{sorted(map(str, unknown))[:5]}")
        out = {}
        for t in tasks:
            try:
                found = {i: PLAN[t](anns, pos) for i, anns in coco.imgToAnns.items()}
            except (KeyError, TypeError, ValueError) as e:
                raise InputError(f"{path}: malformed annotation for task {t} ({type(e).__name__}: {e})") from None
            out[t] = {i: d for i, d in found.items() if d is not None}
        return out

    def _units(self, tasks: list, images: dict, data: dict) -> list:
        def record(i, ts):
            return (*images[i], {t: data[t][i] for t in ts})

        for t in tasks:
            if not any(i in images for i in data[t]):
                raise InputError(f"{self.cfg.path}: no COCO image has annotations for the {t} task")
        if self.cfg.tuples:
            ids = sorted(set(images).intersection(*(data[t] for t in tasks)))
            if not ids:
                raise InputError(f"{self.cfg.path}: no COCO image has annotations for all of {tasks}")
            per = max(1, MAX_IMAGES // (len(tasks) + 1))
            return [("tuples", [record(i, tasks) for i in c]) for c in self.shuffled_chunks(ids, 0, per)]
        return [(t, [record(i, [t]) for i in c]) for k, t in enumerate(tasks)
                for c in self.shuffled_chunks(sorted(i for i in data[t] if i in images), k,
                                              self.cfg.pairs_per_sequence)]

    def _group(self, record, tasks: list) -> list[Image.Image]:
        """(image, a1..ak) of one planned image for `tasks`, cropped to the output square."""
        file_name, w, h, data = record
        path = Path(self.cfg.path) / self.cfg.image_dir / file_name
        img = load_rgb(path)
        if img.size != (w, h):
            raise Skip("annotation_size_mismatch", f"{path} ({img.size[0]}x{img.size[1]}, JSON {w}x{h})")
        try:
            drawn = [DRAW[t](img, data[t], self.cfg.pose_layout) for t in tasks]
        except (ValueError, TypeError, KeyError, IndexError) as e:
            raise Skip("annotation_corrupt", f"{path} ({e})") from None
        # Mask maps keep their exact palette colours (no blended edges that name no category).
        flat = [Image.Resampling.NEAREST if t in FLAT_TASKS else Image.Resampling.BICUBIC for t in tasks]
        return [resize_square(img, self.size)] + [resize_square(im, self.size, resample=r)
                                                  for im, r in zip(drawn, flat)]

    def make(self, unit, rng, seed):
        task, records = unit
        tasks = list(records[0][3])  # a record's tasks, in config order
        images, used, picked, out = [], [], [], []
        for rec in records:
            pick = [tasks[j] for j in self.tuple_pick(rng, len(tasks))] if task == "tuples" else tasks
            try:
                images += self._group(rec, pick)
            except Skip as e:
                out.append(e)
                continue
            used.append(rec[0])
            picked.append(pick)
        return self.pairs_result(out, images, used, task, tasks, picked=picked)
