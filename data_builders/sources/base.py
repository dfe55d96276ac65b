"""What every source shares: the `Source` base class and the input helpers of the local-file sources.

A source has `plan() -> list of units` (runs once, in the launching process; deterministic order; a
missing, unreadable or empty input folder is an InputError) and `make(unit, rng, seed) -> list of
Sequence | Skip` (runs in a worker; bad inputs come back as `Skip(reason, item)` and are counted).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from tokenizer.common.errors import ImageLoadError, InputError
from tokenizer.image_io import IMAGE_EXTENSIONS, list_images, load_image, resize_square

from ..config import DataConfig, Skip, SourceConfig, source_name, unit_rng
from ..sequence import Sequence

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".gif")
MESH_EXTENSIONS = (".obj", ".urdf")


def image_failure(e: ImageLoadError) -> str:
    r = e.reason.lower()
    if "no such file" in r:
        return "image_missing"
    if "truncated" in r or "broken data stream" in r or "image file is truncated" in r:
        return "image_truncated"
    if "mode" in r:
        return "image_bad_mode"
    return "image_corrupt"


def load_square(path, size: int) -> Image.Image:
    try:
        return resize_square(load_image(path), size)
    except ImageLoadError as e:
        raise Skip(image_failure(e), path) from None


def input_dir(path: str, what: str) -> Path:
    if not path:
        raise InputError(f"{what}: source needs `path`")
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: {what} folder does not exist")
    if not p.is_dir():
        raise InputError(f"{p}: {what} source path is not a folder")
    try:
        next(p.iterdir(), None)
    except OSError as e:
        raise InputError(f"{p}: {what} folder is unreadable ({e.strerror})") from None
    return p


def images_in(folder: Path, what: str) -> list[Path]:
    found = list_images(folder)
    if not found:
        raise InputError(f"{folder}: no images found for the {what} source")
    return found


def by_stem(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS + (".npy",)}


class Source:
    def __init__(self, cfg: SourceConfig, data: DataConfig):
        self.cfg, self.data, self.name = cfg, data, source_name(cfg)
        self.size = data.image_size

    def plan(self) -> list:
        raise NotImplementedError

    def make(self, unit, rng: np.random.Generator, seed: int) -> list:
        raise NotImplementedError

    def seq(self, images, kind, **meta) -> Sequence:
        return Sequence(list(images), kind, self.name, meta)

    def shuffled_chunks(self, stems: list, stream_index: int, n: int) -> list[list]:
        """`stems` in an order seeded by (dataset seed, source, `stream_index`), cut into runs of `n`."""
        rng = unit_rng(self.data.seed, self.name, stream_index, stream=1)
        return chunks([stems[i] for i in rng.permutation(len(stems))], n)

    def task_units(self, stems: list, tasks: list) -> list:
        """(task, stems) units: every stem once per task, `pairs_per_sequence` stems a unit."""
        return [(task, c) for t, task in enumerate(tasks)
                for c in self.shuffled_chunks(stems, t, self.cfg.pairs_per_sequence)]

    def pairs_result(self, skipped: list, images: list, stems: list, task: str, tasks: list, **meta) -> list:
        """A pairs/tuples unit's output: its skipped items, then its sequence if any stem was usable
        (`meta`: extra metadata of a pairs sequence)."""
        if not stems:
            return skipped
        if task == "tuples":
            return skipped + [self.seq(images, "tuples", annotations=list(tasks), tuple_size=len(tasks) + 1,
                                       stems=stems)]
        return skipped + [self.seq(images, "pairs", task=task, tuple_size=2, stems=stems, **meta)]


def is_frame_dir(d: Path) -> bool:
    return d.is_dir() and any(x.suffix.lower() in IMAGE_EXTENSIONS for x in d.iterdir())


def chunks(items, n):
    return [items[i:i + n] for i in range(0, len(items), n)]


def sequence_layout(frames, annots, layout):
    if layout == "interleaved":
        return [im for pair in zip(frames, annots) for im in pair]
    if layout == "grouped":
        return list(frames) + list(annots)
    raise InputError(f"annotated video layout must be 'interleaved' or 'grouped', got {layout!r}")

