"""The `videos` source: video files (PyAV) or frame folders, n_frames frames at each stride."""

from __future__ import annotations

import re
from pathlib import Path

from PIL import Image

from tokenizer.common.errors import InputError
from tokenizer.image_io import IMAGE_EXTENSIONS, load_image, resize_square

from ..config import Skip
from .base import VIDEO_EXTENSIONS, Source, input_dir, is_frame_dir, load_square


def _natural(p: Path):
    """Sort key that orders frame2.png before frame10.png."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]


class VideoReader:
    """Frames of a video file (PyAV) or of a frame folder (image names in natural order), by index."""

    def __init__(self, path: str):
        self.path = Path(path)
        self.is_dir = self.path.is_dir()

    def _files(self) -> list[Path]:
        return sorted((x for x in self.path.iterdir() if x.suffix.lower() in IMAGE_EXTENSIONS), key=_natural)

    def count(self) -> int:
        if self.is_dir:
            return len(self._files())
        import av

        try:
            with av.open(str(self.path)) as c:
                if not c.streams.video:
                    raise Skip("video_zero_frames", f"{self.path} (no video stream)")
                s = c.streams.video[0]
                if s.frames:
                    return int(s.frames)
                # No frame count in the header: count packets that carry data (no decoding needed).
                return sum(1 for pkt in c.demux(s) if pkt.size)
        except Skip:
            raise
        except Exception as e:  # av.error.* (InvalidDataError, ...) and OSError: not a playable video
            raise Skip("video_corrupt", f"{self.path} ({type(e).__name__})") from None

    def frames(self, indices: list[int], size: int | None) -> list[Image.Image]:
        """RGB frames at `indices`, as `size` px squares (resize_square) or, with size None, as decoded."""
        want = sorted(set(indices))
        got: dict[int, Image.Image] = {}
        if self.is_dir:
            files = self._files()
            for i in want:
                got[i] = load_square(files[i], size) if size else load_image(files[i])
        else:
            import av

            last = want[-1]
            wanted = set(want)
            try:
                with av.open(str(self.path)) as c:
                    for i, frame in enumerate(c.decode(video=0)):
                        if i in wanted:
                            img = frame.to_image().convert("RGB")
                            got[i] = resize_square(img, size) if size else img
                        if i >= last:
                            break
            except Exception as e:
                if len(got) < len(want):
                    raise Skip("video_corrupt", f"{self.path} ({type(e).__name__})") from None
            if len(got) < len(want):
                raise Skip("video_truncated", f"{self.path} (decoded {len(got)} of {len(want)} frames)")
        return [got[i] for i in indices]


class VideosSource(Source):
    """n_frames frames at each stride (10/20/30) from a random start. Too short for a stride: policy
    `short_video` = skip (counted as video_too_short) or shrink (largest stride that fits, meta stride)."""

    def plan(self):
        root = input_dir(self.cfg.path, "videos")
        vids = sorted(str(p) for p in root.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())
        vids += sorted(str(d) for d in root.rglob("*") if is_frame_dir(d))
        if not vids:
            raise InputError(f"{root}: no video files or frame folders found")
        if self.cfg.short_video not in ("skip", "shrink"):
            raise InputError(f"short_video must be 'skip' or 'shrink', got {self.cfg.short_video!r}")
        return [(v, int(s)) for v in sorted(vids) for s in self.cfg.strides]

    def make(self, unit, rng, seed):
        path, stride = unit
        r = VideoReader(path)
        total = r.count()
        n = self.cfg.n_frames
        if total == 0:
            raise Skip("video_zero_frames", path)
        used = stride
        if (n - 1) * stride + 1 > total:
            if self.cfg.short_video == "skip" or total < n:
                raise Skip("video_too_short", f"{path} ({total} frames < {(n - 1) * stride + 1} for stride {stride})")
            used = (total - 1) // (n - 1)
        start = int(rng.integers(0, total - (n - 1) * used))
        idx = [start + i * used for i in range(n)]
        return [self.seq(r.frames(idx, self.size), "video", paths=[path], stride=used, requested_stride=stride,
                         frames=idx, total_frames=total)]
