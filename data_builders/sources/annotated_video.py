"""The `annotated_video` source: videos with per-frame annotations, 8 frames + their 8 annotations a sequence.

Layout under `path` (a video is named by its file stem or its folder name):

    {frames_dir}/{video}.mp4          the frames: a video file (any of base.VIDEO_EXTENSIONS) ...
    {frames_dir}/{video}/             ... or a folder of frame images (natural name order)
    {task}/{video}/                   per-frame annotation images (formats rgb and labels)
    {json_dir}/{video}.json           per-frame boxes / keypoints (formats boxes and keypoints)

Every task in `tasks` has a format, `annotation_formats[task]` (default: boxes and keypoints for the tasks
of those names, rgb for any other):

    rgb        ready-made RGB annotation frames, used as they are
    labels     integer label maps (PNG / .npy), drawn with the fixed palette (annotations.segmentation_image;
               `label_preset` or `label_offset` / `ignore_index`, `ignore_color` as for the annotate source)
    boxes      JSON "boxes": [[x0, y0, x1, y1, label], ...] in frame pixels, drawn over the frame
    keypoints  JSON "keypoints": [[[x, y, v] x 17], ...] (COCO order, one list a person), drawn as skeletons

An annotation goes with the frame of the same name; with a video file, a frame's name is its 0-based index
(`000012.png` or JSON key "12" = frame 12). The JSON is an object {frame name: {"boxes": ..., "keypoints":
...}} or a list (entry i = the frame named i); a frame is annotated for a JSON task when its entry has that key. Frames
without an annotation are not used (sparse annotation is fine): `strides` count annotated frames, each
stride makes units, and `short_video` (clamp | skip | pad) decides for videos too short for a stride.
Layouts (`layouts`): interleaved {f1, a1, f2, a2, ...} or grouped {f1..f8, a1..a8}.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from PIL import Image

from lvm_base.errors import InputError
from lvm_base.image_io import resize_square

from .. import annotations as ann
from ..config import Skip
from ..sequence import MAX_IMAGES
from .base import VIDEO_EXTENSIONS, Source, input_dir, is_frame_dir, load_square, read_array, sequence_layout
from .videos import VideoReader, check_strides, pick_frames, short_video_policy

FORMATS = ("rgb", "labels", "boxes", "keypoints")
JSON_FORMATS = ("boxes", "keypoints")
LAYOUTS = ("interleaved", "grouped")


def frame_key(name: str):
    """A frame's or annotation's name as a matching key: digits -> int (000012 = 12), else the name."""
    return int(name) if name.isdigit() else name


def video_name(path: str) -> str:
    p = Path(path)
    return p.name if p.is_dir() else p.stem


class AnnotatedVideoSource(Source):
    """8 frames + their 8 annotations per sequence, for every (video, task, layout, stride); see the module."""

    def plan(self):
        root = input_dir(self.cfg.path, "annotated_video")
        if not self.cfg.tasks:
            raise InputError("annotated_video source: name the annotation tasks in `tasks`")
        for task, fmt in self.formats().items():
            d = root / (self.cfg.json_dir if fmt in JSON_FORMATS else task)
            if not d.is_dir():
                raise InputError(f"{d}: annotation folder of task {task!r} ({fmt}) does not exist")
        bad = set(self.cfg.layouts) - set(LAYOUTS)
        if bad or not self.cfg.layouts:
            raise InputError(f"annotated_video layouts must be interleaved and/or grouped, got {self.cfg.layouts}")
        short_video_policy(self.cfg.short_video)
        try:
            ann.label_settings(self.cfg.label_preset)
        except ValueError as e:
            raise InputError(f"annotated_video source: {e}") from None
        strides = check_strides(self.cfg.strides, "annotated_video")
        vids = self.videos(root / self.cfg.frames_dir)
        return [(v, t, layout, s) for v in vids for t in self.cfg.tasks for layout in self.cfg.layouts
                for s in strides]

    def formats(self) -> dict:
        """task -> annotation format, checked (InputError for an unknown format)."""
        out = {}
        for t in self.cfg.tasks:
            out[t] = self.cfg.annotation_formats.get(t, t if t in JSON_FORMATS else "rgb")
            if out[t] not in FORMATS:
                raise InputError(f"annotated_video task {t!r}: unknown annotation format {out[t]!r}; "
                                 f"valid: {', '.join(FORMATS)}")
        return out

    @staticmethod
    def videos(fdir: Path) -> list[str]:
        """The video files and frame folders in `fdir` (sorted by video name, names unique)."""
        vids = [p for p in sorted(fdir.iterdir()) if (p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
                or is_frame_dir(p)] if fdir.is_dir() else []
        if not vids:
            raise InputError(f"{fdir}: no video files or frame folders found")
        dup = sorted(n for n, k in Counter(video_name(str(p)) for p in vids).items() if k > 1)
        if dup:
            raise InputError(f"{fdir}: more than one video named {dup[0]!r} (a file and a folder, or two files)")
        return [str(p) for p in vids]

    def annotations(self, vid: str, task: str, fmt: str) -> dict:
        """{frame key: annotation file or JSON entry} of one video and task."""
        root = Path(self.cfg.path)
        if fmt in JSON_FORMATS:
            side = root / self.cfg.json_dir / f"{vid}.json"
            if not side.is_file():
                raise Skip("pair_missing_side", f"{vid} (no {side})")
            try:
                data = json.loads(side.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                raise Skip("annotation_corrupt", side) from None
            items = enumerate(data) if isinstance(data, list) else data.items() if isinstance(data, dict) else None
            if items is None:
                raise Skip("annotation_corrupt", f"{side} (not a JSON object or list)")
            return {frame_key(str(k)): e for k, e in items if isinstance(e, dict) and fmt in e}
        d = root / task / vid
        if not d.is_dir():
            raise Skip("pair_missing_side", f"{vid} (no {d})")
        files = VideoReader(str(d)).files() + (sorted(d.glob("*.npy")) if fmt == "labels" else [])
        return {frame_key(p.stem): p for p in files}

    def matched(self, reader: VideoReader, vid: str, annots: dict) -> tuple[list[tuple], list[Skip]]:
        """((frame index, annotation key) of the annotated frames in frame order, skipped annotations
        whose frame is missing)."""
        if reader.is_dir:
            pos = {frame_key(p.stem): i for i, p in enumerate(reader.files())}
            orphans = [Skip("pair_missing_side", f"{vid}/{k} (no frame)") for k in annots if k not in pos]
            return sorted((pos[k], k) for k in annots if k in pos), orphans
        total = reader.count()
        bad = [k for k in annots if not isinstance(k, int) or k >= total]
        if bad:
            # A video file's frames are named by index: out-of-range names are usually 1-based numbering.
            raise Skip("annotation_out_of_range", f"{vid}/{bad[0]} (video has {total} frames; annotation "
                                                  "names are 0-based frame indices)")
        return sorted((k, k) for k in annots), []

    def draw(self, fmt: str, frame: Image.Image, a, vid: str) -> Image.Image:
        """The annotation image of one frame, at the frame's size."""
        if fmt == "rgb":
            return load_square(a, None)
        try:
            if fmt == "labels":
                return self.label_image(a, frame)
            if fmt == "boxes":
                return ann.draw_box_list(frame, a["boxes"])
            return ann.draw_coco_people(frame, a["keypoints"])
        except (TypeError, ValueError, IndexError, KeyError):
            raise Skip("annotation_corrupt", f"{vid} ({fmt} of a frame)") from None

    def label_image(self, path: Path, frame: Image.Image) -> Image.Image:
        try:
            arr = read_array(str(path))
        except (OSError, ValueError, SyntaxError):
            raise Skip("annotation_corrupt", path) from None
        arr = arr[..., 0] if arr.ndim == 3 else arr
        if arr.shape != (frame.size[1], frame.size[0]):
            raise Skip("annotation_size_mismatch", f"{path} ({arr.shape[1]}x{arr.shape[0]}, frame "
                                                   f"{frame.size[0]}x{frame.size[1]})")
        offset, ignore = ann.label_settings(self.cfg.label_preset, self.cfg.label_offset, self.cfg.ignore_index)
        return ann.segmentation_image(ann.label_ids(arr, offset, ignore), self.cfg.ignore_color)

    def make(self, unit, rng, seed):
        path, task, layout, stride = unit
        vid, fmt = video_name(path), self.formats()[task]
        reader = VideoReader(path)
        annots = self.annotations(vid, task, fmt)
        pairs, out = self.matched(reader, vid, annots)
        policy = short_video_policy(self.cfg.short_video)
        try:
            pick, used, padded = pick_frames(len(pairs), MAX_IMAGES // 2, stride, policy, rng, vid)
            idx = [pairs[i][0] for i in pick]
            frames = reader.frames(idx, None)
            a = [self.draw(fmt, f, annots[pairs[i][1]], vid) for f, i in zip(frames, pick)]
        except Skip as e:
            return out + [e]
        f = [resize_square(im, self.size) for im in frames]
        # label maps keep their exact palette colours
        resample = Image.Resampling.NEAREST if fmt == "labels" else Image.Resampling.BICUBIC
        a = [resize_square(im, self.size, resample=resample) for im in a]
        extra = {"padded": padded} if policy == "pad" else {}
        return out + [self.seq(sequence_layout(f, a, layout), "annotated_video", annotation=task, format=fmt,
                               layout=layout, frames=idx, stride=used, requested_stride=stride, video=vid,
                               **extra)]
