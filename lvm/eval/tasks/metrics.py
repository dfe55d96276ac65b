"""Task metrics of one prediction against the truth: uint8 RGB images (PIL or arrays) in, floats out.

Metrics are on 8-bit images scaled to [0, 1]. PSNR is the tokenizer's (tokenizer/evaluate.py), so the
suite and `lvm tokenizer eval` agree on the same images, identical ones included.

Segmentation: the truth's colors are snapped to the first `SEG_CLASSES` colors of the renderer's palette
(background + labels 0..6; the built-in scenes use labels 0 and 1); a prediction's colors are snapped to the
labels the prompt's example answers show, plus background: the prompt defines the task's classes. mIoU is
the mean IoU over the classes present in the truth or the prediction, averaged over episodes; `fg_iou` is the
binary object-vs-background IoU (Pascal-5i's foreground IoU, the paper's segmentation figure).
`miou_palette` snaps predictions to all `SEG_CLASSES` colors instead: there, a blurred edge between blue
(45, 106, 255) and black is nearer to label 5's purple (98, 67, 191) than to either, and becomes a phantom
class with IoU 0.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from lvm.eval.tasks.config import SEG_CLASSES, SEQUENTIAL
from lvm_base.errors import InputError


def _f(img) -> np.ndarray:
    a = np.asarray(img.convert("RGB") if isinstance(img, Image.Image) else img)
    return a.astype(np.float64) / 255.0


def _values(pred, truth, mask: np.ndarray | None):
    """The [0, 1] values of both images, only the pixels inside `mask` ((H, W) bool) when given."""
    p, t = _f(pred), _f(truth)
    if mask is None:
        return p, t
    m = np.asarray(mask, bool)
    if not m.any():
        raise ValueError("empty mask")
    return p[m], t[m]


def mse(pred, truth, mask: np.ndarray | None = None) -> float:
    p, t = _values(pred, truth, mask)
    return float(((p - t) ** 2).mean())


def psnr(pred, truth, mask: np.ndarray | None = None) -> float:
    """PSNR in dB of images in [0, 1] (inside `mask` when given); capped at 100 dB for identical images."""
    from tokenizer.evaluate import psnr as psnr_of_values  # imports torch: only once a metric is needed

    return psnr_of_values(*_values(pred, truth, mask))


def snap_to_palette(img, palette: np.ndarray) -> np.ndarray:
    """RGB image -> (H, W) index of the nearest palette color (Euclidean in RGB)."""
    a = np.asarray(img.convert("RGB") if isinstance(img, Image.Image) else img).astype(np.float32)
    pal = np.asarray(palette, np.float32)
    d = ((a[:, :, None, :] - pal[None, None]) ** 2).sum(-1)
    return d.argmin(-1)


def seg_palette() -> np.ndarray:
    from data_builders.annotations import PALETTE

    return PALETTE[:SEG_CLASSES]


def seg_classes(images, palette: np.ndarray | None = None) -> list[int]:
    """Palette indices that segmentation images show (background 0 always included)."""
    palette = seg_palette() if palette is None else palette
    return sorted({0}.union(*(np.unique(snap_to_palette(im, palette)).tolist() for im in images)))


def seg_labels(pred, truth, palette: np.ndarray | None = None, classes: list[int] | None = None):
    """(prediction, truth) label maps of two segmentation images snapped to the palette; `classes`: the
    palette indices the prediction may take (default: all); the truth may take any."""
    palette = seg_palette() if palette is None else palette
    t = snap_to_palette(truth, palette)
    if classes is None:
        return snap_to_palette(pred, palette), t
    return np.asarray(classes)[snap_to_palette(pred, np.asarray(palette)[classes])], t


def miou(pred, truth, palette: np.ndarray | None = None, classes: list[int] | None = None, labels=None) -> float:
    """Mean IoU of two segmentation *images* after snapping them (`seg_labels`); classes in either count.
    `labels`: their label maps when already snapped."""
    p, t = labels if labels is not None else seg_labels(pred, truth, palette, classes)
    ious = []
    for c in np.union1d(np.unique(p), np.unique(t)):
        inter = np.logical_and(p == c, t == c).sum()
        union = np.logical_or(p == c, t == c).sum()
        ious.append(inter / union)
    return float(np.mean(ious))


def fg_iou(pred, truth, palette: np.ndarray | None = None, classes: list[int] | None = None, labels=None) -> float:
    """Foreground IoU of two segmentation images: object (any label) vs background, the binary IoU the
    paper and Visual Prompting report (Pascal-5i protocol); snapped as `miou` snaps. 1.0 when both are
    all background."""
    p, t = labels if labels is not None else seg_labels(pred, truth, palette, classes)
    p, t = p != 0, t != 0
    union = np.logical_or(p, t).sum()
    return float(np.logical_and(p, t).sum() / union) if union else 1.0


def _gray(img) -> np.ndarray:
    return _f(img).mean(-1)


def abs_rel(pred, truth) -> float:
    """Mean |pred - gt| / gt over the truth's foreground (gt > 0) of depth *images* (gray levels in [0, 1])."""
    p, t = _gray(pred), _gray(truth)
    fg = t > 1.5 / 255
    if not fg.any():
        raise ValueError("depth truth has no foreground")
    return float((np.abs(p[fg] - t[fg]) / t[fg]).mean())


def rmse(pred, truth) -> float:
    return float(np.sqrt(((_gray(pred) - _gray(truth)) ** 2).mean()))


def lpips_distance(lp, pred, truth) -> float:
    """LPIPS distance of two images under the `tokenizer.lpips.LPIPS` module `lp`."""
    import torch

    x = torch.from_numpy(np.stack([_f(pred), _f(truth)])).permute(0, 3, 1, 2).float() * 2 - 1
    dev = next(lp.parameters()).device
    with torch.no_grad():
        return float(lp(x[:1].to(dev), x[1:].to(dev))[0])


def task_metrics(task: str, pred, truth, hole: np.ndarray | None = None, classes: list[int] | None = None,
                 lpips=None) -> dict:
    """All metrics of one prediction for `task` (the main one is METRIC[task][0]).

    `classes`: segmentation labels the prompt shows (`seg_classes` of its example answers); `lpips`: an
    LPIPS module for colorization's perceptual distance (the paper's colorization figures are MSE and
    LPIPS)."""
    if task in SEQUENTIAL:
        return {"psnr": psnr(pred, truth), "mse": mse(pred, truth)}
    if task == "colorization":
        return {"psnr": psnr(pred, truth), "mse": mse(pred, truth),
                **({"lpips": lpips_distance(lpips, pred, truth)} if lpips is not None else {})}
    if task == "segmentation":
        snapped = seg_labels(pred, truth, classes=classes)  # one snapping serves both metrics
        return {"miou": miou(pred, truth, labels=snapped), "miou_palette": miou(pred, truth),
                "fg_iou": fg_iou(pred, truth, labels=snapped)}
    if task == "depth":
        return {"abs_rel": abs_rel(pred, truth), "rmse": rmse(pred, truth)}
    if task == "inpainting":
        return {"hole_psnr": psnr(pred, truth, hole), "psnr": psnr(pred, truth)}
    raise InputError(f"unknown task {task!r}")


def mean_image(images) -> Image.Image:
    a = np.mean([np.asarray(im.convert("RGB"), np.float64) for im in images], axis=0)
    return Image.fromarray(np.round(a).astype(np.uint8), "RGB")
