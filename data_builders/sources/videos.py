"""The `videos` source: video files (PyAV) or frame folders, n_frames frames at each stride.

`path` is a folder (searched recursively for video files and frame folders) or a `.txt` list of video files
/ frame folders, one a line, relative to the list's folder (`#` starts a comment line). Every video gives
one unit per stride; a video too short for a stride follows `short_video` (see `pick_frames`).

Decoding seeks: each unit seeks to the keyframe at or before its first frame and decodes forward from
there (threaded), so a unit near the end of a long clip costs about what one near the start does. Streams
whose timing cannot be trusted (variable frame rate, no rate, MPEG-TS) decode from frame 0 instead.
"""

from __future__ import annotations

import re
from fractions import Fraction
from pathlib import Path

from PIL import Image

from lvm_base.errors import InputError
from lvm_base.image_io import IMAGE_EXTENSIONS, resize_square

from ..config import Skip
from ..sequence import MAX_IMAGES
from .base import VIDEO_EXTENSIONS, Source, input_dir, is_frame_dir, load_square

SHORT_VIDEO = ("clamp", "skip", "pad")  # the `short_video` policies


def _natural(p: Path):
    """Sort key that orders frame2.png before frame10.png."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]


class _NoSeek(Exception):
    """Seeking cannot reproduce linear decoding's frame indices for this stream: decode linearly."""


def _index_of(frame, pts0: int, per_frame: Fraction) -> int:
    if frame.pts is None:
        raise _NoSeek
    return round((frame.pts - pts0) / per_frame)


def _seeked(c, s, first: int):
    """(index, frame) from the keyframe at or before frame `first`; index = what linear decoding counts,
    from the pts: frame 0 is the first decoded frame (its pts need not be 0). For constant-rate streams
    (`VideoReader.probe`); raises _NoSeek where the frames still do not fit: no pts, the seek landing
    after `first` or not on a keyframe, or indices that do not step by one."""
    head = next(iter(c.decode(s)), None)
    if head is None or head.pts is None:
        raise _NoSeek
    pts0, per_frame = head.pts, 1 / (_frame_rate(s) * Fraction(s.time_base))  # pts units a frame
    c.seek(pts0 + int(first * per_frame), stream=s)
    prev = None
    for frame in c.decode(s):
        i = _index_of(frame, pts0, per_frame)
        # A first frame that is not a keyframe decoded without its references (seeking in MPEG-TS).
        if (prev is None and (i > first or not frame.key_frame)) or (prev is not None and i != prev + 1):
            raise _NoSeek
        prev = i
        yield i, frame


def _frame_rate(s) -> Fraction | None:
    """The stream's frame grid: ffmpeg's guessed rate (r_frame_rate, exact for constant-rate streams even
    when the last frame's duration skews the average), else the average rate."""
    rate = s.guessed_rate or s.average_rate
    return Fraction(rate) if rate else None


def _probe_stream(c, s) -> tuple[int, bool]:
    """(frame count, constant rate): the header's count, else the packets' (no decoding); constant rate
    when the stream's time span holds that many frames (within one) at its frame rate: a VFR stream's
    span does not."""
    rate, tb = _frame_rate(s), s.time_base
    per = rate * Fraction(tb) if rate and tb else None  # frames per pts unit
    if s.frames:
        n = int(s.frames)
        timed = s.duration * per if per and s.duration else None
    else:
        pts = [pkt.pts for pkt in c.demux(s) if pkt.size]
        n = len(pts)
        timed = (max(pts) - min(pts)) * per + 1 if per and n and None not in pts else None
    return n, timed is not None and abs(timed - n) <= 1


class VideoReader:
    """Frames of a video file (PyAV) or of a frame folder (image names in natural order), by index."""

    def __init__(self, path: str):
        self.path = Path(path)
        self.is_dir = self.path.is_dir()
        self._probed = None  # (frame count, constant rate) of a video file, once read

    def files(self) -> list[Path]:
        """The frame images of a frame folder, in natural name order (frame i = files()[i])."""
        return sorted((x for x in self.path.iterdir() if x.suffix.lower() in IMAGE_EXTENSIONS), key=_natural)

    def count(self) -> int:
        if self.is_dir:
            return len(self.files())
        return self.probe()[0]

    def probe(self) -> tuple[int, bool]:
        """(frame count, whether seeking can find frames by pts: see `_probe_stream`) of a video file."""
        if self._probed is not None:
            return self._probed
        import av

        try:
            with av.open(str(self.path)) as c:
                if not c.streams.video:
                    raise Skip("video_zero_frames", f"{self.path} (no video stream)")
                self._probed = _probe_stream(c, c.streams.video[0])
                return self._probed
        except Skip:
            raise
        except Exception as e:  # av.error.* (InvalidDataError, ...) and OSError: not a playable video
            raise Skip("video_corrupt", f"{self.path} ({type(e).__name__})") from None

    def frames(self, indices: list[int], size: int | None) -> list[Image.Image]:
        """RGB frames at `indices`, as `size` px squares (resize_square) or, with size None, as decoded."""
        want = sorted(set(indices))
        if self.is_dir:
            files = self.files()
            got = {i: load_square(files[i], size) for i in want}
        else:
            # Seeking only pays from a later frame; it gives up (None) wherever it cannot match linear decoding.
            got = self._decode(want, size, seek=True) if want[0] > 0 and self.probe()[1] else None
            got = got or self._decode(want, size, seek=False)
            if len(got) < len(want):
                raise Skip("video_truncated", f"{self.path} (decoded {len(got)} of {len(want)} frames)")
        return [got[i] for i in indices]

    def _decode(self, want: list[int], size: int | None, seek: bool) -> dict | None:
        """{index: frame} of the sorted indices `want`; with `seek`, None where seeking gave up or fell short."""
        import av

        got, wanted = {}, set(want)
        try:
            with av.open(str(self.path)) as c:
                if not c.streams.video:
                    raise Skip("video_zero_frames", f"{self.path} (no video stream)")
                s = c.streams.video[0]
                s.thread_type = "AUTO"
                for i, frame in _seeked(c, s, want[0]) if seek else enumerate(c.decode(s)):
                    if i in wanted:
                        img = frame.to_image().convert("RGB")
                        got[i] = resize_square(img, size) if size else img
                    if i >= want[-1]:
                        break
        except _NoSeek:
            return None
        except Skip:
            raise
        except Exception as e:
            if seek:
                return None
            if len(got) < len(want):
                raise Skip("video_corrupt", f"{self.path} ({type(e).__name__})") from None
        return got if not seek or len(got) == len(want) else None


def short_video_policy(name: str) -> str:
    """The policy a `short_video` value names (clamp | skip | pad); InputError for anything else."""
    if name not in SHORT_VIDEO:
        raise InputError(f"short_video must be clamp, skip or pad, got {name!r}")
    return name


def check_strides(strides, what: str) -> list[int]:
    if not strides or not all(isinstance(s, int) and s >= 1 for s in strides):
        raise InputError(f"{what} source: strides must be a non-empty list of integers >= 1, got {strides!r}")
    return [int(s) for s in strides]


def pick_frames(total: int, n: int, stride: int, policy: str, rng, what: str) -> tuple[list[int], int, int]:
    """n frame indices (of `total`) at `stride` from a random start (rng None: frame 0): (indices, stride
    used, frames padded).

    Too short for the stride: clamp takes the largest stride that fits (too short at stride 1: skipped),
    pad takes every stride-th frame from frame 0 and repeats the last one, skip skips. Skipping raises
    Skip("video_too_short")."""
    need = (n - 1) * stride + 1
    used = stride
    if need > total:
        if policy == "pad" and total >= 1:
            real = [i * stride for i in range((total - 1) // stride + 1)]
            return real + [real[-1]] * (n - len(real)), stride, n - len(real)
        if policy != "clamp" or total < n:
            raise Skip("video_too_short", f"{what} ({total} frames < {need} for stride {stride})")
        used = (total - 1) // (n - 1)
    start = int(rng.integers(0, total - (n - 1) * used)) if rng is not None else 0
    return [start + i * used for i in range(n)], used, 0


def list_file(p: Path) -> list[str]:
    """The videos / frame folders a .txt list names (relative to its folder; blank and # lines skipped)."""
    try:
        lines = [ln.strip() for ln in p.read_text().splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{p}: video list is unreadable ({type(e).__name__})") from None
    items = [str(p.parent / ln) for ln in lines if ln and not ln.startswith("#")]
    if not items:
        raise InputError(f"{p}: the video list names no videos")
    # Missing entries are counted per unit (video_missing); none at all means a wrong list or base folder.
    if not any(Path(x).exists() for x in items):
        raise InputError(f"{p}: none of its {len(items)} videos exists (paths are relative to {p.parent})")
    return items


def find_videos(path: str) -> list[str]:
    """Video files and frame folders under the folder `path` (sorted), or those a .txt list names (in order)."""
    p = Path(path)
    if p.suffix.lower() == ".txt" and not p.is_dir():
        if not p.is_file():
            raise InputError(f"{p}: video list file does not exist")
        return list_file(p)
    root = input_dir(path, "videos")
    vids = sorted(str(x) for x in root.rglob("*")  # one walk: video files and frame folders
                  if (x.suffix.lower() in VIDEO_EXTENSIONS and x.is_file()) or is_frame_dir(x))
    if not vids:
        raise InputError(f"{root}: no video files or frame folders found")
    return vids


class VideosSource(Source):
    """n_frames frames at each stride (10/20/30) from a random start; a video too short for a stride
    follows `short_video` (clamp: meta stride < requested_stride; pad: meta padded; skip: video_too_short)."""

    def plan(self):
        vids = find_videos(self.cfg.path)
        short_video_policy(self.cfg.short_video)
        if not 1 <= self.cfg.n_frames <= MAX_IMAGES:
            raise InputError(f"videos source: n_frames must be in 1..{MAX_IMAGES}, got {self.cfg.n_frames}")
        return [(v, s) for v in vids for s in check_strides(self.cfg.strides, "videos")]

    def make(self, unit, rng, seed):
        path, stride = unit
        if not Path(path).exists():
            raise Skip("video_missing", path)
        r = VideoReader(path)
        total = r.count()
        if total == 0:
            raise Skip("video_zero_frames", path)
        policy = short_video_policy(self.cfg.short_video)
        idx, used, padded = pick_frames(total, self.cfg.n_frames, stride, policy, rng, path)
        extra = {"padded": padded} if policy == "pad" else {}
        return [self.seq(r.frames(idx, self.size), "video", paths=[path], stride=used, requested_stride=stride,
                         frames=idx, total_frames=total, **extra)]
