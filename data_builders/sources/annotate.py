"""The `annotate` source: annotations the builder draws itself from images (+ label / depth maps, JSON)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from tokenizer.common.errors import ImageLoadError, InputError
from tokenizer.image_io import IMAGE_EXTENSIONS, load_image, resize_square

from .. import annotations as ann
from ..config import Skip
from ..sequence import MAX_IMAGES
from .base import Source, by_stem, chunks, image_failure, input_dir


DEFAULT_TASKS = ["edges", "colorization", "inpainting"]


def _read_array(path: Path) -> np.ndarray:
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False)
    with Image.open(path) as im:
        im.load()
        return np.asarray(im)


def _side_map(src: Source, stem: str, task: str, folder: str, img: Image.Image) -> np.ndarray:
    """The 2-D label or depth map of `stem` in `{path}/{folder}`, checked against the image's size."""
    d = Path(src.cfg.path) / folder
    side = by_stem(d).get(stem)
    if side is None:
        raise Skip("pair_missing_side", f"{stem} (no {task} map in {d})")
    try:
        arr = _read_array(side)
    except (OSError, ValueError, SyntaxError):
        raise Skip("annotation_corrupt", side) from None
    if arr.ndim == 3:
        arr = arr[..., 0]
    if arr.shape != (img.size[1], img.size[0]):
        raise Skip("annotation_size_mismatch", side)
    return arr


def _side_json(src: Source, stem: str) -> dict:
    """`{path}/{json_dir}/{stem}.json`: {"boxes": [[x0,y0,x1,y1,label]], "keypoints": [[[x,y,v]...]]}."""
    side = Path(src.cfg.path) / src.cfg.json_dir / f"{stem}.json"
    if not side.is_file():
        raise Skip("pair_missing_side", f"{stem} (no {side})")
    try:
        return json.loads(side.read_text())
    except (OSError, json.JSONDecodeError):
        raise Skip("annotation_corrupt", side) from None


# One function per task: (source, stem, image, rng) -> (input, target) images, resized to the output size later.
def _edges(src, stem, img, rng):
    return img, ann.edges_image(img)


def _colorization(src, stem, img, rng):
    return ann.colorization_input(img), img


def _inpainting(src, stem, img, rng):
    img = resize_square(img, src.size)  # boxes drawn at the output size
    return ann.inpainting_input(img, rng)[0], img


def _segmentation(src, stem, img, rng):
    labels = _side_map(src, stem, "segmentation", src.cfg.labels_dir, img)
    return img, ann.segmentation_image(labels.astype(np.int64) - 1)  # label 0 = background


def _depth(src, stem, img, rng):
    depth = _side_map(src, stem, "depth", src.cfg.depth_dir, img).astype(np.float64)
    return img, ann.depth_image(depth, depth > 0)


def _normals(src, stem, img, rng):
    depth = _side_map(src, stem, "normals", src.cfg.depth_dir, img).astype(np.float64)
    mask = depth > 0
    filled = np.where(mask, depth, depth[mask].max() if mask.any() else 1)
    return img, ann.normals_image(ann.normals_from_depth(filled, src.cfg.fov_deg), mask)


def _boxes(src, stem, img, rng):
    boxes = _side_json(src, stem).get("boxes", [])
    labels = [bx[4] if len(bx) > 4 else i for i, bx in enumerate(boxes)]
    return img, ann.draw_boxes(img, [bx[:4] for bx in boxes], labels)


def _keypoints(src, stem, img, rng):
    b = img
    for person in _side_json(src, stem).get("keypoints", []):
        pts = np.asarray(person, np.float64).reshape(-1, 3)
        b = ann.draw_skeleton(b, pts[:, :2], ann.COCO_SKELETON, visible=pts[:, 2] > 0)
    return img, b


DRAW = {"edges": _edges, "colorization": _colorization, "inpainting": _inpainting, "segmentation": _segmentation,
        "depth": _depth, "normals": _normals, "boxes": _boxes, "keypoints": _keypoints}
ANNOTATE_TASKS = tuple(DRAW)


class AnnotateSource(Source):
    """Annotations drawn by the builder from images (+ label maps / depth maps / JSON where a task needs them)."""

    def plan(self):
        input_dir(self.cfg.path, "annotate")
        tasks = self.cfg.tasks or DEFAULT_TASKS
        bad = set(tasks) - set(ANNOTATE_TASKS)
        if bad:
            raise InputError(f"annotate source: unknown tasks {sorted(bad)}; valid: {list(ANNOTATE_TASKS)}")
        img_dir = self._image_dir()
        stems = sorted(p.stem for p in (img_dir.iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not stems:
            raise InputError(f"{img_dir}: no images found for the annotate source")
        if self.cfg.tuples:
            per = max(1, MAX_IMAGES // (len(tasks) + 1))
            return [("tuples", c) for c in chunks(stems, per)]
        return self.task_units(stems, tasks)

    def _image_dir(self) -> Path:
        root = Path(self.cfg.path)
        return root / self.cfg.image_dir if (root / self.cfg.image_dir).is_dir() else root

    def _pair(self, stem: str, task: str, rng) -> tuple[Image.Image, Image.Image]:
        img_path = by_stem(self._image_dir()).get(stem)
        if img_path is None:
            raise Skip("image_missing", stem)
        try:
            img = load_image(img_path)
        except ImageLoadError as e:
            raise Skip(image_failure(e), img_path) from None
        a, b = DRAW[task](self, stem, img, rng)
        return resize_square(a, self.size), resize_square(b, self.size)

    def make(self, unit, rng, seed):
        task, stems = unit
        tasks = (self.cfg.tasks or DEFAULT_TASKS) if task == "tuples" else [task]
        images, used, out = [], [], []
        for s in stems:
            try:
                pairs = [self._pair(s, t, rng) for t in tasks]
            except Skip as e:
                out.append(e)
                continue
            if task == "tuples":
                images += [pairs[0][0]] + [b for _, b in pairs]  # (image, a1, ..., ak)
            else:
                images += list(pairs[0])
            used.append(s)
        return self.pairs_result(out, images, used, task, tasks)
