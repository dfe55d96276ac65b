"""A PNG grid of sample sequences from image shards: a few rows of every kind (and every task)."""

from __future__ import annotations

from collections import Counter

from tokenizer.image_io import make_grid, save_png

from .sequence import sample_images, sample_meta
from tokenizer.tar import iter_tar_samples, list_shards


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
    """Write the grid to `out`; rows are (kind or kind:task) groups in first-seen order."""
    seen, rows, labels = Counter(), [], []
    for shard in list_shards(shards)[:max_shards]:
        for sample in iter_tar_samples(shard):
            meta = sample_meta(sample)
            label = row_label(meta)
            if seen[label] >= per_kind:
                continue
            seen[label] += 1
            rows.append(sample_images(sample))
            labels.append(label)
    if not rows:
        from tokenizer.common.errors import InputError

        raise InputError(f"{shards}: no image sequences found")
    order = sorted(range(len(rows)), key=lambda i: labels[i])
    grid = make_grid([rows[i] for i in order], [labels[i] for i in order],
                     col_labels=[str(i) for i in range(16)], cell=cell)
    return save_png(grid, out), len(rows)
