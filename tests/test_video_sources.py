"""Video sources at Kinetics scale: seeking gives the frames linear decoding gives, every stride makes a unit
(clamp / skip / pad), video list files, and annotated videos from mp4 + label maps / boxes / keypoints.

Clips are 32 px and encode frame i in their four 16 px quadrants (three bits each), so every decoded frame
says which frame it is.
"""

import json
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from data_builders.annotations import PALETTE
from data_builders.config import SourceConfig
from data_builders.sequence import sample_images
from data_builders.sources import videos
from data_builders.sources.videos import VideoReader
from data_builders.stats import collect_stats
from test_data_builders import metas, run_build
from lvm_base.errors import InputError

QUADS = [(0, 0), (0, 16), (16, 0), (16, 16)]


def code(i):
    a = np.zeros((32, 32, 3), np.uint8)
    for q, (y, x) in enumerate(QUADS):
        a[y:y + 16, x:x + 16] = 16 + 32 * ((i >> (3 * q)) & 7)
    return a


def read(img):
    """The frame number a decoded frame shows (the inner 8 px of each quadrant)."""
    a = np.asarray(img.convert("L"), float)
    return sum(int(np.clip(round((a[y + 4:y + 12, x + 4:x + 12].mean() - 16) / 32), 0, 7)) << (3 * q)
               for q, (y, x) in enumerate(QUADS))


def write_clip(path, n=300, codec="libx264", fmt=None, pts=None, gop=30):
    """n frames at 30 fps; `pts(i)`: the frame's pts in 1/30 s (a late start, gaps); gop: keyframe spacing."""
    import av

    with av.open(str(path), "w", format=fmt) as c:
        s = c.add_stream(codec, rate=30)
        s.width = s.height = 32
        s.pix_fmt = "yuv420p"
        s.codec_context.gop_size = gop
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(code(i), format="rgb24")
            if pts:
                frame.pts = pts(i)
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


@pytest.fixture
def seeks(monkeypatch):
    """The first frame index decoded after each seek."""
    starts, real = [], videos._seeked

    def spy(c, s, first):
        for k, (i, frame) in enumerate(real(c, s, first)):
            if k == 0:
                starts.append(i)
            yield i, frame
    monkeypatch.setattr(videos, "_seeked", spy)
    return starts


def test_default_strides_each_make_a_unit(tmp_path):
    d = tmp_path / "vids"
    d.mkdir()
    write_clip(d / "ten_seconds.mp4")  # 300 frames: 16 at stride 20 need 301, at 30 451
    _, samples, _ = run_build(tmp_path, [SourceConfig(type="videos", path=str(d))])
    ms = metas(samples)
    assert sorted((m["requested_stride"], m["stride"]) for m in ms) == [(10, 10), (20, 19), (30, 19)]
    for s, m in zip(samples, ms):
        assert np.all(np.diff(m["frames"]) == m["stride"]) and m["frames"][-1] < m["total_frames"] == 300
        assert [read(im) for im in sample_images(s)] == m["frames"]


@pytest.mark.parametrize("name,codec,fmt,pts", [
    ("x264.mp4", "libx264", None, None),          # B-frames, keyframes at scene cuts
    ("mpeg4.mp4", "mpeg4", None, None),
    ("late.mkv", "libx264", None, lambda i: i + 100),  # first pts is not 0
    ("late.mp4", "libx264", None, lambda i: i + 100),
])
def test_seek_gives_the_frames_of_linear_decoding(tmp_path, seeks, name, codec, fmt, pts):
    r = VideoReader(str(write_clip(tmp_path / name, codec=codec, fmt=fmt, pts=pts)))
    assert r.probe() == (300, True)
    linear = r._decode(list(range(300)), None, seek=False)
    assert [read(linear[i]) for i in range(300)] == list(range(300))
    for first, stride in [(1, 1), (47, 3), (123, 10), (250, 3), (284, 1)]:
        idx = [first + stride * k for k in range(16)]
        got = r.frames(idx, None)
        assert [np.asarray(im).tobytes() for im in got] == [np.asarray(linear[i]).tobytes() for i in idx]
    # every unit seeked, to a keyframe at or before its first frame (gop 30: never a whole second before)
    assert len(seeks) == 5 and all(f - 30 <= s <= f for s, f in zip(seeks, [1, 47, 123, 250, 284]))
    assert seeks[3] >= 220


def test_streams_without_usable_timing_decode_linearly(tmp_path, seeks, monkeypatch):
    ts = VideoReader(str(write_clip(tmp_path / "clip.ts", codec="mpeg4", fmt="mpegts")))
    vfr = VideoReader(str(write_clip(tmp_path / "vfr.mkv", pts=lambda i: i + 6 * (i >= 150))))  # 0.2 s gap
    idx = [200 + 3 * k for k in range(16)]
    assert vfr.probe() == (300, False)
    for r in (ts, vfr):  # MPEG-TS seeks land between keyframes: checked, then decoded from the start
        assert [read(im) for im in r.frames(idx, 32)] == idx
    monkeypatch.setattr(videos, "_frame_rate", lambda s: None)  # no frame rate at all
    assert VideoReader(ts.path).probe()[1] is False
    assert [read(im) for im in VideoReader(ts.path).frames(idx, None)] == idx
    assert not seeks


def test_short_video_policies(tmp_path):
    d = tmp_path / "vids"
    d.mkdir()
    write_clip(d / "short.mp4", n=100)  # 16 frames at stride 5 fit (76), at 10 not (151)
    write_clip(d / "tiny.mp4", n=10)  # fewer than 16 frames
    by = {}
    for policy in ("clamp", "skip", "pad"):
        src = SourceConfig(type="videos", path=str(d), strides=[5, 10], short_video=policy)
        _, samples, cfg = run_build(tmp_path, [src], name=policy)
        for s, m in zip(samples, metas(samples)):
            assert [read(im) for im in sample_images(s)] == m["frames"]
            by[policy, m["paths"][0].rsplit("/", 1)[1], m["requested_stride"]] = m
        by[policy] = collect_stats(cfg.out)["failures"]
    assert by["clamp", "short.mp4", 10]["stride"] == 6 and by["clamp", "short.mp4", 5]["stride"] == 5
    assert by["clamp"] == {"video_too_short": 2}  # tiny.mp4 at both strides
    assert by["skip"] == {"video_too_short": 3} and ("skip", "short.mp4", 10) not in by
    pad = by["pad", "short.mp4", 10]
    assert pad["frames"] == list(range(0, 100, 10)) + [90] * 6 and pad["padded"] == 6 and pad["stride"] == 10
    assert by["pad", "tiny.mp4", 5]["frames"] == [0, 5] + [5] * 14 and by["pad"] == {}
    assert by["pad", "short.mp4", 5]["padded"] == 0
    with pytest.raises(InputError, match="short_video"):
        run_build(tmp_path, [SourceConfig(type="videos", path=str(d), short_video="loop")], name="bad")


def test_video_list_file(tmp_path):
    (tmp_path / "clips" / "frames_a").mkdir(parents=True)
    write_clip(tmp_path / "clips" / "a.mp4", n=200)
    for i in range(20):
        Image.fromarray(code(i)).save(tmp_path / "clips" / "frames_a" / f"f{i}.png")  # natural order: f2 < f10
    lst = tmp_path / "lists" / "train.txt"
    lst.parent.mkdir()
    lst.write_text("# videos of the train split\n../clips/a.mp4\n\n../clips/frames_a\n../clips/gone.mp4\n")
    _, samples, cfg = run_build(tmp_path, [SourceConfig(type="videos", path=str(lst), strides=[1, 10])])
    got = sorted((m["paths"][0].rsplit("/", 1)[1], m["stride"]) for m in metas(samples))
    assert got == [("a.mp4", 1), ("a.mp4", 10), ("frames_a", 1), ("frames_a", 1)]
    assert all([read(im) for im in sample_images(s)] == m["frames"] for s, m in zip(samples, metas(samples)))
    assert collect_stats(cfg.out)["failures"] == {"video_missing": 2}
    for text, err in (("# nothing\n", "names no videos"), ("x.mp4\ny/\n", "none of its 2 videos exists")):
        lst.write_text(text)
        with pytest.raises(InputError, match=err):
            run_build(tmp_path, [SourceConfig(type="videos", path=str(lst))], name="bad")


def annotated_root(tmp_path):
    """frames/clip.mp4 (300 frames), label maps of every 2nd frame, boxes + keypoints JSON of every frame."""
    root = tmp_path / "av"
    for d in ("frames", "segmentation/clip", "annotations"):
        (root / d).mkdir(parents=True)
    write_clip(root / "frames" / "clip.mp4")
    for i in range(0, 300, 2):
        Image.fromarray(np.full((32, 32), i // 2 % 7 + 1, np.uint8)).save(root / "segmentation/clip" / f"{i:06d}.png")
    person = [[16, 16, 2]] + [[0, 0, 0]] * 16  # the nose only
    frames = [{"boxes": [[4, 4, 28, 28, i % 3]], "keypoints": [person]} for i in range(300)]
    (root / "annotations" / "clip.json").write_text(json.dumps(frames))
    return root


def test_annotated_video_from_mp4_label_maps_and_json(tmp_path):
    root = annotated_root(tmp_path)
    src = SourceConfig(type="annotated_video", path=str(root), tasks=["segmentation", "boxes", "keypoints"],
                       annotation_formats={"segmentation": "labels"})
    _, samples, cfg = run_build(tmp_path, [src])
    ms = metas(samples)
    used = {(m["annotation"], m["requested_stride"], m["layout"]): m["stride"] for m in ms}
    # label maps cover every 2nd frame: strides count annotated frames, 8 at 30 need 211 of 150: clamped to 21
    assert used == {(t, s, lay): (21 if (t, s) == ("segmentation", 30) else s)
                    for t in ("segmentation", "boxes", "keypoints") for s in (10, 20, 30)
                    for lay in ("interleaved", "grouped")}
    for s, m in zip(samples, ms):
        ims = sample_images(s)
        f, a = (ims[0::2], ims[1::2]) if m["layout"] == "interleaved" else (ims[:8], ims[8:])
        assert [read(im) for im in f] == m["frames"] and m["format"] == {"segmentation": "labels"}.get(
            m["annotation"], m["annotation"])
        step = 2 * m["stride"] if m["annotation"] == "segmentation" else m["stride"]
        assert np.all(np.diff(m["frames"]) == step)
        for i, fr, im in zip(m["frames"], f, a):
            px = np.asarray(im).astype(int)
            if m["annotation"] == "segmentation":  # value v -> class v - 1 -> PALETTE[v]
                assert np.abs(px[16, 16] - PALETTE[i // 2 % 7 + 1]).max() <= 2
            elif m["annotation"] == "boxes":
                assert np.abs(px[16, 4] - PALETTE[i % 3 + 1]).max() <= 2  # the outline, over the frame
                assert (px[10, 10] == np.asarray(fr)[10, 10]).all()
            else:
                assert px[16, 16].min() == 255 and (px[2, 2] == np.asarray(fr)[2, 2]).all()  # a white nose
    assert collect_stats(cfg.out)["failures"] == {}


def test_annotated_video_bad_inputs(tmp_path):
    root = annotated_root(tmp_path)
    src = SourceConfig(type="annotated_video", path=str(root), tasks=["segmentation"],
                       annotation_formats={"segmentation": "labels"}, strides=[10], layouts=["grouped"])
    for bad, err in (({"annotation_formats": {"segmentation": "masks"}}, "unknown annotation format"),
                     ({"tasks": ["depth"]}, "annotation folder of task 'depth'"),
                     ({"layouts": ["stacked"]}, "layouts"), ({"strides": [0]}, "strides")):
        with pytest.raises(InputError, match=err):
            run_build(tmp_path, [replace(src, **bad)], name="bad")
    # 1-based label names (000300.png = the 300th frame) on a 300-frame video: the video is skipped, said why
    seg = root / "segmentation/clip"
    Image.fromarray(np.ones((32, 32), np.uint8)).save(seg / "000300.png")
    _, samples, cfg = run_build(tmp_path, [src], name="one_based")
    assert not samples and collect_stats(cfg.out)["failures"] == {"annotation_out_of_range": 1}
    (seg / "000300.png").unlink()
    Image.fromarray(np.ones((16, 16), np.uint8)).save(seg / "000000.png")  # smaller than the frames
    _, samples, cfg = run_build(tmp_path, [replace(src, short_video="pad", strides=[100])], name="size")
    assert not samples and collect_stats(cfg.out)["failures"] == {"annotation_size_mismatch": 1}
