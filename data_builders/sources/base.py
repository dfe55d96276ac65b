"""What every source shares: the `Source` base class and the input helpers of the local-file sources.

A source has `plan() -> list of units` (runs once, in the launching process; deterministic order; a
missing, unreadable or empty input folder is an InputError) and `make(unit, rng, seed) -> list of
Sequence | Skip` (runs in a worker; bad inputs come back as `Skip(reason, item)` and are counted).
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from lvm_base.errors import ImageLoadError, InputError
from lvm_base.image_io import IMAGE_EXTENSIONS, list_images, load_image, resize_square

from ..config import DataConfig, Skip, SourceConfig, source_name, unit_rng
from ..sequence import Sequence

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".gif")
MESH_EXTENSIONS = (".obj", ".urdf", ".glb", ".gltf")


def image_failure(e: ImageLoadError) -> str:
    r = e.reason.lower()
    if "no such file" in r:
        return "image_missing"
    if "truncated" in r or "broken data stream" in r or "image file is truncated" in r:
        return "image_truncated"
    if "mode" in r:
        return "image_bad_mode"
    return "image_corrupt"


def load_rgb(path) -> Image.Image:
    """An input image as RGB; a file that is not one is a skipped item (its reason from `image_failure`)."""
    try:
        return load_image(path)
    except ImageLoadError as e:
        raise Skip(image_failure(e), path) from None


def load_square(path, size: int | None) -> Image.Image:
    """`load_rgb` as a `size` px square (size None: as stored)."""
    img = load_rgb(path)
    return resize_square(img, size) if size else img


def read_array(path: str) -> np.ndarray:
    """A label or depth map as stored: .npy (no pickles) or any image PIL reads, unconverted."""
    if path.endswith(".npy"):
        return np.load(path, allow_pickle=False)
    with Image.open(path) as im:
        im.load()
        return np.asarray(im)


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


SIDE_EXTENSIONS = IMAGE_EXTENSIONS + (".npy",)  # label and depth maps
MAX_LISTED = 10  # file names a plan-time warning shows per folder


def scan_files(folder: Path, extensions=IMAGE_EXTENSIONS, skip_top=()) -> list[str]:
    """Relative POSIX paths of the files under `folder` ending in one of `extensions`: recursive, sorted,
    hidden files and folders left out, and the top-level folders named in `skip_top`.

    One os.scandir walk: a directory entry carries its type, so files cost no stat call (folders cost one,
    which also stops symlink loops)."""
    found, todo, seen = [], [("", str(folder))], {_dir_id(folder)}
    while todo:
        rel, d = todo.pop()
        try:
            with os.scandir(d) as entries:
                for e in entries:
                    if e.name.startswith("."):
                        continue
                    if e.is_dir():
                        if (rel or e.name not in skip_top) and (i := _dir_id(e)) not in seen:
                            seen.add(i)
                            todo.append((f"{rel}{e.name}/", e.path))
                    elif e.name.lower().endswith(extensions) and e.is_file():
                        found.append(rel + e.name)
        except OSError as err:
            raise InputError(f"{d}: folder is unreadable ({err.strerror})") from None
    return sorted(found)


def _dir_id(d) -> tuple[int, int]:
    st = d.stat() if isinstance(d, os.DirEntry) else os.stat(d)
    return st.st_dev, st.st_ino


def stem_rule(cfg: SourceConfig, folder: str):
    """The function file name (without extension) -> stem of the files in `folder` (an `image_dir` or task
    name): its `stem_templates` entry ("rain-{stem}", matched whole), else `stem_regex` (searched; named
    group `stem`), else None (the name is the stem). The function returns None for a name that does not match."""
    template = cfg.stem_templates.get(folder)
    if template is not None:
        if str(template).count("{stem}") != 1:
            raise InputError(f"stem_templates[{folder!r}] = {template!r} must contain '{{stem}}' once")
        head, tail = str(template).split("{stem}")
        pattern = re.compile(f"{re.escape(head)}(?P<stem>.+){re.escape(tail)}")
        return lambda name: (m := pattern.fullmatch(name)) and m["stem"]
    if cfg.stem_regex:
        try:
            pattern = re.compile(cfg.stem_regex)
        except re.error as e:
            raise InputError(f"stem_regex {cfg.stem_regex!r} is not a regular expression ({e})") from None
        if "stem" not in pattern.groupindex:
            raise InputError(f"stem_regex {cfg.stem_regex!r} needs a named group (?P<stem>...)")
        return lambda name: (m := pattern.search(name)) and m["stem"]
    return None


def check_stem_templates(cfg: SourceConfig, folders) -> None:
    bad = sorted(set(cfg.stem_templates) - set(folders))
    if bad:
        raise InputError(f"stem_templates: unknown folders {bad}; valid: {sorted(set(folders))}")


@dataclass
class StemIndex:
    """The files of one folder tree by key (see `stem_index`), and those left out."""

    folder: Path
    paths: dict  # key -> path (str)
    unmatched: list  # relative paths whose name the stem rule does not match
    duplicates: list  # relative paths whose key an earlier file (in sorted order) already has


def stem_index(folder: Path, rule=None, extensions=IMAGE_EXTENSIONS, skip_top=()) -> StemIndex:
    """Every file under `folder` (one `scan_files` walk) by key: its relative path without extension, the
    file name replaced by its stem under `rule`, e.g. "n01440764/n01440764_10026", so an image and its
    partner in a mirrored tree share a key."""
    idx = StemIndex(folder, {}, [], [])
    for rel in scan_files(folder, extensions, skip_top):
        head, _, name = rel.rpartition("/")
        stem = os.path.splitext(name)[0]
        stem = stem if rule is None else rule(stem)
        if not stem:
            idx.unmatched.append(rel)
            continue
        key = f"{head}/{stem}" if head else stem
        if key in idx.paths:
            idx.duplicates.append(rel)
            continue
        idx.paths[key] = os.path.join(str(folder), rel)
    return idx


def side_index(root: Path, folder: str, cfg: SourceConfig, what: str, extensions=IMAGE_EXTENSIONS,
               rule_key: str | None = None) -> StemIndex:
    """`stem_index` of the partner folder `{root}/{folder}` (an InputError if it is not a folder), names read
    by the stem rule of `rule_key` (default: the folder's)."""
    d = root / folder
    if not d.is_dir():
        raise InputError(f"{d}: the {what} folder does not exist")
    return stem_index(d, stem_rule(cfg, rule_key or folder), extensions)


def warn_files(folder, names: list, text: str, count: int | None = None) -> None:
    """One stderr line: how many (`count`, default len(names)) files of `folder` `text`, naming the first
    MAX_LISTED of `names`."""
    count = len(names) if count is None else count
    if count:
        shown = ", ".join(names[:MAX_LISTED]) + (", ..." if count > MAX_LISTED else "")
        print(f"warning: {folder}: {count} {text}: {shown}", file=sys.stderr)


def check_partners(images: StemIndex, side: StemIndex, skipped: str = "pair_missing_side", shared: bool = False) -> None:
    """Plan-time check of one partner folder: an InputError when no image has a partner there, else a
    warning for images without one, for partner files without an image, and for names the rule skips
    (not when the images share the folder: there the other side's files never match)."""
    lonely = [k for k in images.paths if k not in side.paths]
    if images.paths and len(lonely) == len(images.paths):
        ex_i, ex_s = list(images.paths)[:3], list(side.paths)[:3] or side.unmatched[:3]
        raise InputError(f"{side.folder}: no file pairs with an image in {images.folder} (image stems {ex_i}, "
                         f"here {ex_s}); name them alike or set stem_templates / stem_regex")
    named = [os.path.relpath(images.paths[k], images.folder) for k in lonely[:MAX_LISTED]]
    warn_files(side.folder, named, f"of {len(images.paths)} images in {images.folder} have no partner here "
                                   f"(skipped as {skipped})", len(lonely))
    warn_files(side.folder, [k for k in side.paths if k not in images.paths], "files have no image (unused)")
    warn_index(side, shared)


def warn_index(idx: StemIndex, shared: bool = False) -> None:
    if not shared:
        warn_files(idx.folder, idx.unmatched, "files do not match the stem rule (unused)")
    warn_files(idx.folder, idx.duplicates, "files repeat the stem of an earlier file (unused)")


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

    def tuple_pick(self, rng: np.random.Generator, k: int) -> list[int]:
        """Indices of the annotations in one tuple of k: all of them, or (`tuple_subsets`) a random m - 1 of
        them, m uniform in 1..k+1 (the image counts as one of the m)."""
        if not self.cfg.tuple_subsets:
            return list(range(k))
        m = int(rng.integers(1, k + 2))
        return sorted(rng.choice(k, size=m - 1, replace=False).tolist())

    def check_tuples(self) -> None:
        if self.cfg.tuple_subsets and not self.cfg.tuples:
            raise InputError(f"{self.name}: tuple_subsets needs tuples: true")

    def pairs_result(self, skipped: list, images: list, stems: list, task: str, tasks: list, picked=None,
                     **meta) -> list:
        """A pairs/tuples unit's output: its skipped items, then its sequence if any stem was usable
        (`picked`: each tuple's annotation names under `tuple_subsets`; `meta`: extra metadata of pairs)."""
        if not stems:
            return skipped
        if task == "tuples" and self.cfg.tuple_subsets:
            return skipped + [self.seq(images, "tuples", annotations=list(tasks), tuple_annotations=picked,
                                       tuple_sizes=[len(p) + 1 for p in picked], stems=stems)]
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

