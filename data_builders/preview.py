"""A PNG grid of sample sequences from image shards: a few rows of every kind (and every task)."""

from __future__ import annotations

import io
import sys
from collections import Counter

from PIL import Image

from lvm_base.errors import InputError
from lvm_base.image_io import make_grid, save_png

from .sequence import frame_names, sample_images, sample_meta
from lvm_base.tar import iter_tar_samples, list_shards


def decode_sample(sample: dict, shard) -> tuple[dict, list]:
    """(metadata, images) of an image-shard sample, or an InputError naming `shard:key` and what is wrong
    (its JSON is not a JSON object, an image member does not decode). Long jobs that read shards (`lvm data
    tokenize`, `lvm data preview`) skip such a sample and count it instead of ending on it."""
    where = f"{shard}:{sample.get('__key__', '?')}"
    try:
        meta = sample_meta(sample)
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise InputError(f"{where}.json: not JSON ({' '.join(str(e).split())[:200]})") from None
    if not isinstance(meta, dict):
        raise InputError(f"{where}.json: not a JSON object (a {type(meta).__name__})")
    try:
        return meta, sample_images(sample)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise InputError(f"{where}.{_bad_member(sample) or '?'}: image does not decode "
                         f"({' '.join(str(e).split())[:200]})") from None


def _bad_member(sample: dict) -> str | None:
    """The first image member of `sample` that does not decode (looked for only after a failure, to name it)."""
    for name in frame_names(sample):
        try:
            with Image.open(io.BytesIO(sample[name])) as im:
                im.load()
        except Exception:  # whatever failed in sample_images fails here too; only the name is wanted
            return name
    return None


def row_label(meta: dict) -> str:
    sub = meta.get("task") or meta.get("annotation") or meta.get("scenario") or ""
    if meta.get("kind") == "tuples":
        sub = "+".join(meta.get("annotations", []))
    if meta.get("kind") == "annotated_video":
        sub = f"{sub}/{meta.get('layout', '')}"
    if meta.get("kind") == "class_group":
        sub = f"g={meta.get('group_size')}"
    return f"{meta.get('kind', '?')}:{sub}" if sub else meta.get("kind", "?")


def preview(shards, out, per_kind: int = 2, max_shards: int = 200, cell: int = 96):
    """Write the grid to `out`; rows are (kind or kind:task) groups in first-seen order. Returns (the PNG's
    path, rows, samples skipped: undecodable ones, and the rest of a shard after a bad tar header)."""
    seen, rows, labels, skipped = Counter(), [], [], 0
    for shard in list_shards(shards)[:max_shards]:
        try:
            for sample in iter_tar_samples(shard):
                try:
                    meta, images = decode_sample(sample, shard)
                except InputError as e:
                    skipped += 1
                    print(f"warning: {e}; skipped", file=sys.stderr)
                    continue
                label = row_label(meta)
                if seen[label] >= per_kind:
                    continue
                seen[label] += 1
                rows.append(images)
                labels.append(label)
        except InputError as e:  # a bad tar header: the samples before it are kept, the rest of the shard is not
            skipped += 1
            print(f"warning: {e}; the rest of this shard is skipped", file=sys.stderr)
    if not rows:
        raise InputError(f"{shards}: no image sequences found" + (f" ({skipped} skipped)" if skipped else ""))
    order = sorted(range(len(rows)), key=lambda i: labels[i])
    grid = make_grid([rows[i] for i in order], [labels[i] for i in order],
                     col_labels=[str(i) for i in range(16)], cell=cell)
    return save_png(grid, out), len(rows), skipped
