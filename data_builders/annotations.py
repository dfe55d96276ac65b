"""Annotations drawn as images: every label becomes an RGB picture the sequence model can read and write.

All functions are pure numpy/PIL and deterministic given their inputs (and the `rng` they are passed), so
both the built-in renderer and the local-file sources draw the same way:

- `label_ids(values, offset, ignore_index)`: a dataset's stored label map -> class ids (presets in
  LABEL_PRESETS); `segmentation_image(ids)`: class ids -> fixed color palette (background = black);
- `depth_image(depth, mask)`: metric depth -> normalized gray (near = white, background = black);
- `normals_from_depth(depth, fov_deg)` + `normals_image(n, mask)`: camera-space normals as (n+1)/2 RGB;
- `edges_image(img)`: Sobel magnitude thresholded -> white edges on black;
- `colorization_input(img)`: the grayscale input of the colorization task (gray -> color);
- `inpainting_input(img, rng)`: random black boxes over the image (input of inpainting: boxes -> original);
- `draw_boxes(img, boxes)`: color-coded boxes drawn over the image;
- `draw_skeleton(img, points, edges)`: keypoints + limbs drawn OpenPose-style over the image.
- `openpose_keypoints(kps)` + `draw_openpose(img, people)`: COCO-17 keypoints in OpenPose's BODY_18 layout
  (neck from the shoulders), drawn with OpenPose's limbs and colours.
"""

from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image, ImageDraw

# Fixed palette: label i always gets the same color in every dataset, so "segmentation" means one thing.
# Golden-ratio hue steps keep neighbouring labels far apart; index 0 is reserved for background (black).
def _make_palette(n: int = 256) -> np.ndarray:
    pal = np.zeros((n, 3), np.uint8)
    for i in range(1, n):
        h = (i * 0.618033988749895) % 1.0
        s = 0.65 + 0.35 * ((i * 7) % 3) / 2
        v = 0.75 + 0.25 * ((i * 5) % 2)
        pal[i] = np.round(np.array(colorsys.hsv_to_rgb(h, s, v)) * 255)
    return pal


PALETTE = _make_palette()

# COCO-17 person skeleton (keypoint index pairs), used for keypoint annotations in the COCO layout.
COCO_SKELETON = [(15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8),
                 (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6)]
# Wireframe of a box's 8 corners (bit i of the corner index = max on axis i): the built-in renderer's
# "skeleton" of an object, so the keypoint task has data without people.
BOX_SKELETON = [(0, 1), (2, 3), (4, 5), (6, 7), (0, 2), (1, 3), (4, 6), (5, 7), (0, 4), (1, 5), (2, 6), (3, 7)]

# OpenPose BODY_18 (its COCO-18 model, the pose renders of OpenPose demos and ControlNet): joint order, each
# joint's COCO-17 index (the neck has none: it is the shoulders' midpoint), the 17 limbs OpenPose draws, and
# its colours: 18 hues 20 degrees apart from red, (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0),
# (170, 255, 0) ... (255, 0, 85); limb i and joint i use colour i.
OPENPOSE_JOINTS = ("nose", "neck", "r_shoulder", "r_elbow", "r_wrist", "l_shoulder", "l_elbow", "l_wrist", "r_hip",
                   "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle", "r_eye", "l_eye", "r_ear", "l_ear")
COCO_TO_OPENPOSE = (0, None, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3)
OPENPOSE_LIMBS = [(1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12),
                  (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17)]
OPENPOSE_COLORS = tuple(tuple(round(255 * c) for c in colorsys.hsv_to_rgb(i / 18, 1.0, 1.0)) for i in range(18))


def _rgb(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(arr.astype(np.uint8)), mode="RGB")


IGNORE = -2  # class id of ignored pixels (label maps' `ignore_index`); -1 and below otherwise = background

# How the common datasets store label maps: (label_offset, ignore_index). class = value + offset.
LABEL_PRESETS = {
    "ade20k": (-1, None),     # 0 = "other" (background), 1..150 classes
    "coco_stuff": (0, 255),   # stuffthingmaps: 0..181 class ids, 255 unlabeled
    "cityscapes": (0, 255),   # *_labelTrainIds.png: 0..18 train ids, 255 ignored
    "voc": (-1, 255),         # 0 background, 1..20 classes, 255 object boundaries / difficult
}


def label_settings(preset: str = "", offset: int = -1, ignore_index: int | None = None) -> tuple[int, int | None]:
    """(label_offset, ignore_index) of a preset name, or the explicit values when `preset` is empty."""
    if not preset:
        return offset, ignore_index
    if preset not in LABEL_PRESETS:
        raise ValueError(f"unknown label preset {preset!r}; valid: {', '.join(LABEL_PRESETS)}")
    return LABEL_PRESETS[preset]


def label_ids(values: np.ndarray, offset: int = -1, ignore_index: int | None = None) -> np.ndarray:
    """Stored label-map values (H, W) -> class ids: value + offset (< 0 = background), IGNORE where the
    value is `ignore_index`."""
    v = np.asarray(values).astype(np.int64)
    ids = np.maximum(v + offset, -1)
    return ids if ignore_index is None else np.where(v == ignore_index, IGNORE, ids)


def segmentation_image(ids: np.ndarray, ignore_color=None) -> Image.Image:
    """Class-id map (H, W) -> palette image: id L -> PALETTE[(L mod 255) + 1], id < 0 background (black), IGNORE
    pixels in `ignore_color` (default: background)."""
    ids = np.asarray(ids).astype(np.int64)
    idx = np.where(ids < 0, 0, (ids % 255) + 1)
    rgb = PALETTE[idx]
    if ignore_color is not None:
        rgb = np.where((ids == IGNORE)[..., None], np.asarray(ignore_color, np.uint8), rgb)
    return _rgb(rgb)


def depth_image(depth: np.ndarray, mask: np.ndarray | None = None) -> Image.Image:
    """Metric depth (H, W) -> gray image normalized over the foreground: nearest = 255, farthest = 40."""
    depth = np.asarray(depth, np.float64)
    mask = np.isfinite(depth) & (depth > 0) if mask is None else (np.asarray(mask, bool) & np.isfinite(depth))
    out = np.zeros(depth.shape, np.float64)
    if mask.any():
        lo, hi = depth[mask].min(), depth[mask].max()
        t = (depth - lo) / max(hi - lo, 1e-8)
        out = np.where(mask, 255.0 - 215.0 * t, 0.0)
    g = np.round(np.clip(out, 0, 255)).astype(np.uint8)
    return _rgb(np.repeat(g[..., None], 3, axis=2))


def normals_from_depth(depth: np.ndarray, fov_deg: float) -> np.ndarray:
    """Camera-space unit normals (H, W, 3) from metric depth of a pinhole camera with vertical FOV `fov_deg`.

    Back-projects every pixel to 3-D, takes the cross product of the image-space gradients, and orients
    normals toward the camera (x right, y up, z toward the viewer).
    """
    depth = np.asarray(depth, np.float64)
    h, w = depth.shape
    f = 0.5 * h / np.tan(np.radians(fov_deg) / 2)
    xs = (np.arange(w) + 0.5 - w / 2) / f
    ys = (h / 2 - np.arange(h) - 0.5) / f
    X = depth * xs[None, :]
    Y = depth * ys[:, None]
    Z = -depth
    P = np.stack([X, Y, Z], axis=-1)
    du = np.gradient(P, axis=1)
    dv = np.gradient(P, axis=0)
    n = np.cross(dv, du)
    n /= np.linalg.norm(n, axis=-1, keepdims=True) + 1e-12
    flip = n[..., 2] < 0
    n[flip] *= -1
    return n


def normals_image(normals: np.ndarray, mask: np.ndarray | None = None) -> Image.Image:
    """Unit normals (H, W, 3) -> RGB (n+1)/2 * 255; background black."""
    rgb = (np.asarray(normals) + 1.0) * 127.5
    if mask is not None:
        rgb = np.where(np.asarray(mask, bool)[..., None], rgb, 0.0)
    return _rgb(np.round(np.clip(rgb, 0, 255)))


def edges_image(img: Image.Image, quantile: float = 0.85) -> Image.Image:
    """Sobel edges of the grayscale image: pixels above the `quantile` of gradient magnitude (and a floor)."""
    g = np.asarray(img.convert("L"), np.float64)
    p = np.pad(g, 1, mode="edge")
    gx = (p[:-2, 2:] + 2 * p[1:-1, 2:] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[1:-1, :-2] + p[2:, :-2])
    gy = (p[2:, :-2] + 2 * p[2:, 1:-1] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[:-2, 1:-1] + p[:-2, 2:])
    mag = np.hypot(gx, gy)
    thr = max(np.quantile(mag, quantile), 40.0)
    e = np.where(mag > thr, 255, 0).astype(np.uint8)
    return _rgb(np.repeat(e[..., None], 3, axis=2))


def colorization_input(img: Image.Image) -> Image.Image:
    """The grayscale version of `img` (still 3-channel RGB)."""
    return img.convert("L").convert("RGB")


def inpainting_input(img: Image.Image, rng: np.random.Generator, n_boxes: tuple[int, int] = (1, 3),
                     frac: tuple[float, float] = (0.15, 0.4)) -> tuple[Image.Image, list[list[int]]]:
    """`img` with 1-3 random black boxes (each side 15-40% of the image); returns (image, boxes)."""
    w, h = img.size
    out = img.copy()
    draw = ImageDraw.Draw(out)
    boxes = []
    for _ in range(int(rng.integers(n_boxes[0], n_boxes[1] + 1))):
        bw = int(w * rng.uniform(*frac))
        bh = int(h * rng.uniform(*frac))
        x0 = int(rng.integers(0, w - bw + 1))
        y0 = int(rng.integers(0, h - bh + 1))
        draw.rectangle([x0, y0, x0 + bw - 1, y0 + bh - 1], fill=(0, 0, 0))
        boxes.append([x0, y0, x0 + bw, y0 + bh])
    return out, boxes


def draw_boxes(img: Image.Image, boxes, labels=None, width: int | None = None) -> Image.Image:
    """Boxes [x0, y0, x1, y1] drawn over a copy of `img`, each in its label's palette color."""
    out = img.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    width = width or max(1, round(min(out.size) / 64))
    for i, b in enumerate(boxes):
        lab = labels[i] if labels is not None else i
        color = tuple(int(c) for c in PALETTE[(int(lab) % 255) + 1])
        draw.rectangle([float(b[0]), float(b[1]), float(b[2]) - 1, float(b[3]) - 1], outline=color, width=width)
    return out


def draw_skeleton(img: Image.Image, points, edges, visible=None, radius: int | None = None) -> Image.Image:
    """Keypoints (N, 2) and limbs (index pairs) drawn over a copy of `img`, limb i in palette color i.

    `visible[i]` false (e.g. COCO v == 0) hides point i and its limbs.
    """
    out = img.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    vis = np.ones(len(pts), bool) if visible is None else np.asarray(visible, bool)
    radius = radius or max(1, round(min(out.size) / 80))
    for i, (a, b) in enumerate(edges):
        if a < len(pts) and b < len(pts) and vis[a] and vis[b]:
            color = tuple(int(c) for c in PALETTE[(i % 255) + 1])
            draw.line([tuple(pts[a]), tuple(pts[b])], fill=color, width=max(1, radius))
    for i, (x, y) in enumerate(pts):
        if vis[i]:
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=(255, 255, 255))
    return out


def openpose_keypoints(keypoints) -> tuple[np.ndarray, np.ndarray]:
    """COCO-17 keypoints ([x, y, v] x 17) -> OpenPose BODY_18 points (18, 2) and visibility (18,).

    A point is present when its v > 0 (COCO: labelled, visible or occluded); the neck is the midpoint of
    the two shoulders and present only when both shoulders are."""
    kp = np.asarray(keypoints, np.float64).reshape(17, 3)
    shoulders = kp[[5, 6]]
    idx = [5 if c is None else c for c in COCO_TO_OPENPOSE]  # the neck's row is overwritten below
    pts, vis = kp[idx, :2].copy(), kp[idx, 2] > 0
    pts[1], vis[1] = shoulders[:, :2].mean(axis=0), bool((shoulders[:, 2] > 0).all())
    return pts, vis


def draw_openpose(img: Image.Image, people, radius: int | None = None) -> Image.Image:
    """People [(points (18, 2), visible (18,)), ...] drawn OpenPose-style over a copy of `img`: limb i a
    line 2 * `radius` wide in OPENPOSE_COLORS[i], joint j a disc of `radius` in OPENPOSE_COLORS[j]."""
    out = img.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    r = radius or max(2, round(min(out.size) / 120))  # OpenPose's 4 px at COCO's ~480 px
    for pts, vis in people:
        for i, (a, b) in enumerate(OPENPOSE_LIMBS):
            if vis[a] and vis[b]:
                draw.line([tuple(pts[a]), tuple(pts[b])], fill=OPENPOSE_COLORS[i], width=2 * r)
        for j, (x, y) in enumerate(pts):
            if vis[j]:
                draw.ellipse([x - r, y - r, x + r, y + r], fill=OPENPOSE_COLORS[j])
    return out


def draw_box_list(img: Image.Image, boxes) -> Image.Image:
    """Boxes as the JSON annotations store them, [x0, y0, x1, y1(, label)] (label default: the index)."""
    return draw_boxes(img, [b[:4] for b in boxes], [b[4] if len(b) > 4 else i for i, b in enumerate(boxes)])


def draw_coco_people(img: Image.Image, people) -> Image.Image:
    """People as COCO-17 keypoints, [x, y, v] x 17 each, drawn with COCO_SKELETON (v > 0 is visible)."""
    for person in people:
        pts = np.asarray(person, np.float64).reshape(-1, 3)
        img = draw_skeleton(img, pts[:, :2], COCO_SKELETON, visible=pts[:, 2] > 0)
    return img


def boxes_from_segmentation(ids: np.ndarray) -> tuple[list[list[int]], list[int]]:
    """Tight boxes [x0, y0, x1, y1) of every label >= 0 in a label map, with their labels (sorted)."""
    ids = np.asarray(ids)
    boxes, labels = [], []
    for lab in np.unique(ids):
        if lab < 0:
            continue
        ys, xs = np.nonzero(ids == lab)
        boxes.append([int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1])
        labels.append(int(lab))
    return boxes, labels
