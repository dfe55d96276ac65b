"""Data builders: every sequence kind from tiny inputs the tests make, and the built-in renderer.

The helpers here (tiny images, videos, meshes, pair folders, `run_build`) are shared with test_data_build.py.
"""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_builders.build import build
from data_builders.config import DataConfig, SourceConfig
from data_builders.sequence import sample_images, sample_meta
from lvm_base.tar import iter_tar_samples, list_shards
from data_builders.stats import collect_stats
from lvm_base.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
SIZE = 32


def solid(value, size=40, shape=None):
    arr = np.full((size, shape or size, 3), value, np.uint8)
    return Image.fromarray(arr, "RGB")


def write_video(path, n_frames, size=32):
    """An mpeg4 video whose frame i is solid gray i // 2, so frame indices can be read back."""
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=30)
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        for i in range(n_frames):
            frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), i // 2, np.uint8), format="rgb24")
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def write_cube_obj(path):
    v = [(x, y, z) for x in (0, 1) for y in (0, 2) for z in (0, 0.5)]
    faces = [(1, 2, 4, 3), (5, 7, 8, 6), (1, 5, 6, 2), (3, 4, 8, 7), (1, 3, 7, 5), (2, 6, 8, 4)]
    lines = [f"v {a} {b} {c}" for a, b, c in v] + ["f " + " ".join(map(str, f)) for f in faces]
    path.write_text("\n".join(lines) + "\n")


def run_build(tmp_path, sources, name="out", **kw):
    cfg = DataConfig(out=str(tmp_path / name), image_size=SIZE, shard_size=kw.pop("shard_size", 8),
                     sources=sources, **kw)
    res = build(cfg, progress=False, log=lambda *a: None)
    samples = [s for shard in list_shards(cfg.out) for s in iter_tar_samples(shard)]
    return res, samples, cfg


def metas(samples):
    return [sample_meta(s) for s in samples]


# ---------------------------------------------------------------- every kind from local inputs

def test_single_images_folder_list_and_shards(tmp_path):
    d = tmp_path / "imgs" / "sub"
    d.mkdir(parents=True)
    for i in range(5):
        solid(i * 40).save(d / f"{i}.png")
    _, samples, cfg = run_build(tmp_path, [SourceConfig(type="images", path=str(tmp_path / "imgs"))])
    assert [m["kind"] for m in metas(samples)] == ["single"] * 5
    assert all(len(sample_images(s)) == 1 and sample_images(s)[0].size == (SIZE, SIZE) for s in samples)
    assert sorted(Path(m["paths"][0]).name for m in metas(samples)) == [f"{i}.png" for i in range(5)]
    (tmp_path / "list.txt").write_text("imgs/sub/1.png\nimgs/sub/3.png\n")
    _, s2, _ = run_build(tmp_path, [SourceConfig(type="images", path=str(tmp_path / "list.txt"))], name="o2")
    assert [Path(m["paths"][0]).name for m in metas(s2)] == ["1.png", "3.png"]
    # image shards as input (the stage-1 output itself): every frame becomes a single image
    _, s3, _ = run_build(tmp_path, [SourceConfig(type="images", path=cfg.out)], name="o3")
    assert len(s3) == 5


def test_class_groups(tmp_path):
    for c in ("cat", "dog", "eel"):
        (tmp_path / "cls" / c).mkdir(parents=True)
        for i in range(6):
            solid({"cat": 10, "dog": 120, "eel": 240}[c]).save(tmp_path / "cls" / c / f"{i}.png")
    src = SourceConfig(type="class_groups", path=str(tmp_path / "cls"), count=12)
    _, samples, _ = run_build(tmp_path, [src])
    assert len(samples) == 12
    sizes = set()
    for s in samples:
        m = sample_meta(s)
        g = m["group_size"]
        sizes.add(g)
        assert m["kind"] == "class_group" and m["n_images"] == 16 and len(m["groups"]) == 16 // g
        ims = sample_images(s)
        for j, grp in enumerate(m["groups"]):  # each run of g images comes from its group's class
            assert all(Path(p).parent.name == grp["class"] for p in grp["paths"])
            vals = {int(np.asarray(im).mean()) for im in ims[j * g:(j + 1) * g]}
            assert len(vals) == 1
    assert sizes <= {2, 4, 8, 16} and len(sizes) >= 2


def test_videos_strides_order_and_short_policy(tmp_path):
    vd = tmp_path / "vids"
    vd.mkdir()
    write_video(vd / "long.mp4", 470)
    write_video(vd / "short.mp4", 200)  # fits stride 10 (151 frames) only
    frames = vd / "clip_frames"
    frames.mkdir()
    for i in range(160):
        solid(i).save(frames / f"{i:04d}.png")
    _, samples, _ = run_build(tmp_path, [SourceConfig(type="videos", path=str(vd), short_video="skip")])
    ms = {(Path(m["paths"][0]).name, m["stride"]): (m, s) for s, m in zip(samples, metas(samples))}
    assert set(ms) == {("long.mp4", 10), ("long.mp4", 20), ("long.mp4", 30), ("short.mp4", 10),
                       ("clip_frames", 10)}
    for (name, stride), (m, s) in ms.items():
        idx = m["frames"]
        assert len(idx) == 16 and m["kind"] == "video"
        assert np.all(np.diff(idx) == stride) and idx[0] >= 0 and idx[-1] < m["total_frames"]
        means = [np.asarray(im).mean() for im in sample_images(s)]
        expect = [i // 2 for i in idx] if name.endswith(".mp4") else idx
        assert np.allclose(means, expect, atol=3), (name, stride)  # right frames, in order
    st = collect_stats(tmp_path / "out")
    assert st["failures"] == {"video_too_short": 4}  # short.mp4 and the 160-frame clip at strides 20 and 30
    # clamp policy: the short video gets the largest stride that fits instead
    _, s2, _ = run_build(tmp_path, [SourceConfig(type="videos", path=str(vd), short_video="clamp")], name="o2")
    short = [m for m in metas(s2) if m["paths"][0].endswith("short.mp4")]
    assert sorted((m["requested_stride"], m["stride"]) for m in short) == [(10, 10), (20, 13), (30, 13)]


def test_multiview_mesh_and_folder(tmp_path):
    md = tmp_path / "meshes"
    md.mkdir()
    write_cube_obj(md / "box.obj")
    src = SourceConfig(type="multiview_mesh", path=str(md), orbits_per_object=2)
    _, samples, _ = run_build(tmp_path, [src], image_format="jpg")
    assert len(samples) == 2 and "0.jpg" in samples[0] and len(sample_images(samples[0])) == 16
    (md / "robot.urdf").write_text(
        '<robot name="r"><link name="base"><visual><geometry><mesh filename="box.obj" scale="1 1 1"/>'
        '</geometry></visual></link></robot>')
    _, su, _ = run_build(tmp_path, [src], name="urdf")
    assert sorted(Path(m["paths"][0]).name for m in metas(su)) == ["box.obj"] * 2 + ["robot.urdf"] * 2
    for s in su:  # the object is framed: drawn, and the border rows are background
        im = np.asarray(sample_images(s)[0]).astype(int)
        assert im.std() > 5 and (im[0] == im[0, 0]).all() and (im[-1] == im[-1, 0]).all()
    for m in metas(samples):
        az = np.array(m["azimuths"])
        assert m["kind"] == "multiview" and len(az) == 16
        assert np.allclose((np.diff(az) % 360), 15.0)
        assert 1.5 <= m["radius"] <= 2.2 and -45 <= m["elevation"] <= 45
    assert metas(samples)[0]["elevation"] != metas(samples)[1]["elevation"]  # one elevation per orbit
    views = tmp_path / "views" / "objA"
    views.mkdir(parents=True)
    for i in range(24):
        solid(i * 10).save(views / f"view_{i:02d}.png")
    _, s2, _ = run_build(tmp_path, [SourceConfig(type="multiview_folder", path=str(tmp_path / "views"))], name="o2")
    m = metas(s2)[0]
    idx = m["view_indices"]
    assert len(idx) == 16 and all((b - a) % 24 == 1 for a, b in zip(idx, idx[1:]))
    assert np.allclose([np.asarray(im).mean() for im in sample_images(s2[0])], [i * 10 for i in idx], atol=1)


def make_pairs(root, n=10, tasks=("depth", "segmentation")):
    (root / "images").mkdir(parents=True)
    for t in tasks:
        (root / t).mkdir()
    for i in range(n):
        solid(i * 20).save(root / "images" / f"x{i}.jpg")
        for k, t in enumerate(tasks):
            solid(i * 20 + k + 1).save(root / t / f"x{i}.png")


def test_pairs_and_tuples(tmp_path):
    make_pairs(tmp_path / "p")
    _, samples, _ = run_build(tmp_path, [SourceConfig(type="pairs", path=str(tmp_path / "p"),
                                                      tasks=["depth", "segmentation"])])
    by_task = {}
    for s, m in zip(samples, metas(samples)):
        assert m["kind"] == "pairs" and m["n_images"] == 2 * len(m["stems"]) <= 16
        by_task.setdefault(m["task"], []).extend(m["stems"])
        ims = sample_images(s)
        for j, (src_p, ann_p) in enumerate(m["paths"]):  # image then its own annotation
            assert Path(src_p).stem == Path(ann_p).stem and Path(ann_p).parent.name == m["task"]
    assert {t: sorted(v) for t, v in by_task.items()} == {t: sorted(f"x{i}" for i in range(10))
                                                          for t in ("depth", "segmentation")}
    assert max(m["n_images"] for m in metas(samples)) == 16  # 8 pairs of one task
    _, s2, _ = run_build(tmp_path, [SourceConfig(type="pairs", path=str(tmp_path / "p"), tuples=True,
                                                 tasks=["depth", "segmentation"])], name="o2")
    for s, m in zip(s2, metas(s2)):
        assert m["kind"] == "tuples" and m["tuple_size"] == 3 and m["n_images"] == 3 * len(m["stems"])
        vals = [np.asarray(im).mean() for im in sample_images(s)]
        for j in range(len(m["stems"])):
            base = vals[3 * j]
            assert np.allclose(vals[3 * j:3 * j + 3], [base, base + 1, base + 2], atol=2.5)


def test_annotate_self_made(tmp_path):
    root = tmp_path / "a"
    for d in ("images", "labels", "depth", "annotations"):
        (root / d).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(root / "images" / f"s{i}.png")
        lab = np.zeros((40, 48), np.uint8)
        lab[5:20, 5:30] = 1
        lab[25:35, 10:40] = 2
        Image.fromarray(lab).save(root / "labels" / f"s{i}.png")
        depth = (np.linspace(500, 3000, 48)[None, :] * np.ones((40, 1))).astype(np.uint16)
        Image.fromarray(depth).save(root / "depth" / f"s{i}.png")
        (root / "annotations" / f"s{i}.json").write_text(json.dumps(
            {"boxes": [[2, 2, 20, 20, 3]], "keypoints": [[[10 + k, 5 + k, 2] for k in range(17)]]}))
    tasks = ["edges", "colorization", "inpainting", "segmentation", "depth", "normals", "boxes", "keypoints"]
    _, samples, _ = run_build(tmp_path, [SourceConfig(type="annotate", path=str(root), tasks=tasks)])
    got = {sample_meta(s)["task"]: sample_images(s) for s in samples}
    assert set(got) == set(tasks)
    col = got["colorization"]
    a = np.asarray(col[0]).astype(int)
    assert (a[..., 0] == a[..., 1]).all() and not (np.asarray(col[1])[..., 0] == np.asarray(col[1])[..., 1]).all()
    inp = np.asarray(got["inpainting"][0])
    assert (inp.sum(-1) == 0).sum() > 20  # black boxes
    seg = np.asarray(got["segmentation"][1])
    assert len({tuple(c) for c in seg.reshape(-1, 3)}) >= 3  # background + 2 palette colors (+ resize blends)
    dep = np.asarray(got["depth"][1])[..., 0].astype(int)
    assert dep[:, 2].mean() > dep[:, -3].mean()  # near is bright
    _, s2, _ = run_build(tmp_path, [SourceConfig(type="annotate", path=str(root), tuples=True,
                                                 tasks=["depth", "normals", "edges"])], name="o2")
    m = sample_meta(s2[0])
    assert m["kind"] == "tuples" and m["tuple_size"] == 4 and m["n_images"] == 12


def test_annotated_video_layouts(tmp_path):
    root = tmp_path / "av"
    for d in ("frames/v1", "segmentation/v1"):
        (root / d).mkdir(parents=True)
    for i in range(12):
        solid(i * 10).save(root / "frames/v1" / f"{i:03d}.png")
        solid(i * 10 + 5).save(root / "segmentation/v1" / f"{i:03d}.png")
    _, samples, _ = run_build(tmp_path, [SourceConfig(type="annotated_video", path=str(root),
                                                      tasks=["segmentation"], strides=[1])])
    lay = {}
    for s, m in zip(samples, metas(samples)):
        vals = [round(np.asarray(im).mean()) for im in sample_images(s)]
        f = [i * 10 for i in m["frames"]]
        a = [v + 5 for v in f]
        lay[m["layout"]] = vals
        expect = [x for p in zip(f, a) for x in p] if m["layout"] == "interleaved" else f + a
        assert vals == expect and m["kind"] == "annotated_video" and m["n_images"] == 16
    assert set(lay) == {"interleaved", "grouped"}


# ---------------------------------------------------------------- the built-in renderer

def test_builtin_every_kind_and_split(tmp_path):
    from data_builders import render
    from data_builders.objects import list_objects

    src = SourceConfig(type="builtin", count=36, split="train", n_frames=6, pairs_per_sequence=2, views=4,
                       kinds={"multiview": 1, "video": 1, "pairs": 1, "tuples": 1, "annotated_video": 1, "single": 1,
                              "class_group": 1}, group_sizes=[8, 16])
    _, samples, _ = run_build(tmp_path, [src], shard_size=4)
    ms = metas(samples)
    assert {m["kind"] for m in ms} == {"multiview", "video", "pairs", "tuples", "annotated_video", "single",
                                       "class_group"}
    train = {o.name for o in list_objects("train")}
    held = {o.name for o in list_objects("heldout")}
    assert train and held and not train & held
    for m in ms:
        for name in m.get("objects", []) + ([m["object"]] if "object" in m else []):
            assert name in train
        if m["kind"] == "multiview":
            assert np.allclose(np.diff(m["azimuths"]) % 360, 15.0) and 1.5 <= m["radius"] <= 2.2
        if m["kind"] == "video":
            assert m["n_images"] == 6 and m["scenario"] in render.SCENARIOS


def test_builtin_task_weights(tmp_path):
    src = SourceConfig(type="builtin", count=12, n_frames=2, pairs_per_sequence=1, kinds={"pairs": 1},
                       tasks=["segmentation", "edges", "depth"], task_weights={"edges": 0, "depth": 3})
    _, samples, _ = run_build(tmp_path, [src], shard_size=4)
    tasks = [m["task"] for m in metas(samples)]
    assert "edges" not in tasks and tasks.count("depth") > tasks.count("segmentation")
    for i, bad in enumerate(({"boxes": 1}, {"edges": -1})):
        with pytest.raises(InputError, match="task_weights"):
            run_build(tmp_path, [replace(src, task_weights=bad)], name=f"bad{i}", shard_size=4)


def test_builtin_orbits_both_ways(tmp_path):
    src = SourceConfig(type="builtin", count=8, views=3, kinds={"multiview": 1}, orbit_direction="both")
    _, samples, _ = run_build(tmp_path, [src], shard_size=4)
    steps = [m["step_deg"] for m in metas(samples)]
    assert set(steps) == {15.0, -15.0}
    for m in metas(samples):
        assert np.allclose(np.diff(m["azimuths"]) % 360, m["step_deg"] % 360)
    with pytest.raises(InputError, match="orbit_direction"):
        run_build(tmp_path, [replace(src, orbit_direction="left")], name="bad", shard_size=4)


def test_render_deterministic_and_depth_metric():
    from data_builders import render

    a = render.render_orbit("duck", size=32, seed=5, views=3)
    b = render.render_orbit("duck", size=32, seed=5, views=3)
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a["images"], b["images"]))
    v = a["views"][0]
    # metric depth: object pixels lie within the unit box around the origin, seen from radius r
    d = v.depth[v.mask]
    assert d.size and a["radius"] - 1.0 < d.min() and d.max() < a["radius"] + 1.0
    assert (v.depth[~v.mask] > 5).all()  # background = far plane
    rng = np.random.default_rng(0)
    for task in render.TASKS:
        inp, out = render.task_pair(v, task, rng)
        assert inp.size == out.size == (32, 32)
