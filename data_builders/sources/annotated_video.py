"""The `annotated_video` source: frame folders plus matching annotation frame folders, both layouts."""

from __future__ import annotations

from pathlib import Path

from tokenizer.common.errors import InputError

from ..config import Skip
from ..sequence import MAX_IMAGES
from .base import Source, by_stem, input_dir, is_frame_dir, load_square, sequence_layout


class AnnotatedVideoSource(Source):
    """{path}/{frames_dir}/{video}/ + {path}/{task}/{video}/ (matching frame names): 8 frames + 8
    annotations at stride `strides[0]`, laid out interleaved {f1,a1,...} or grouped {f1..f8,a1..a8}."""

    def plan(self):
        root = input_dir(self.cfg.path, "annotated_video")
        if not self.cfg.tasks:
            raise InputError("annotated_video source: name the annotation folder in `tasks`")
        fdir = root / self.cfg.frames_dir
        vids = sorted(d.name for d in fdir.iterdir() if is_frame_dir(d)) if fdir.is_dir() else []
        if not vids:
            raise InputError(f"{fdir}: no frame folders found")
        return [(v, t, layout) for v in vids for t in self.cfg.tasks for layout in self.cfg.layouts]

    def make(self, unit, rng, seed):
        vid, task, layout = unit
        root = Path(self.cfg.path)
        frames = by_stem(root / self.cfg.frames_dir / vid)
        annots = by_stem(root / task / vid)
        stems = [s for s in sorted(frames) if s in annots]
        out = [Skip("pair_missing_side", f"{vid}/{s} (no {task} frame)") for s in sorted(frames) if s not in annots]
        n, stride = MAX_IMAGES // 2, int(self.cfg.strides[0]) if self.cfg.strides else 1
        if len(stems) < (n - 1) * stride + 1:
            return out + [Skip("video_too_short", f"{vid} ({len(stems)} annotated frames)")]
        start = int(rng.integers(0, len(stems) - (n - 1) * stride))
        idx = [start + i * stride for i in range(n)]
        try:
            f = [load_square(frames[stems[i]], self.size) for i in idx]
            a = [load_square(annots[stems[i]], self.size) for i in idx]
        except Skip as e:
            return out + [e]
        return out + [self.seq(sequence_layout(f, a, layout), "annotated_video", annotation=task, layout=layout,
                               frames=idx, stride=stride, video=vid)]
