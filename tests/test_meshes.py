"""multiview_mesh with GLB files: textures and vertex colours drawn, bad files skipped, the paper's orbit.

The meshes are made here with trimesh and exported as GLB: an icosphere with a fine red/blue checkerboard
texture and one with green/yellow vertex colours in sectors, so every camera sees both colours of each
(an untextured render is one shaded colour).
"""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from data_builders import meshes
from data_builders.config import SourceConfig
from data_builders.sequence import sample_images
from lvm_base.errors import InputError

from test_data_builders import metas, run_build

RED, BLUE = (220, 30, 30), (30, 40, 220)
GREEN, YELLOW = (20, 200, 20), (240, 220, 20)


def checker_sphere(a, b):
    """An icosphere textured with a fine checkerboard of colours `a` and `b` (spherical UVs)."""
    from trimesh.visual import TextureVisuals
    from trimesh.visual.material import PBRMaterial

    m = trimesh.creation.icosphere(subdivisions=3)
    x, y, z = m.vertices.T
    uv = np.stack([(np.arctan2(y, x) / (2 * np.pi)) % 1.0, np.arccos(np.clip(z, -1, 1)) / np.pi], 1)
    checker = (np.add.outer(np.arange(64) // 8, np.arange(64) // 8) % 2).astype(bool)
    tex = np.where(checker[..., None], a, b).astype(np.uint8)
    m.visual = TextureVisuals(uv=uv, material=PBRMaterial(baseColorTexture=Image.fromarray(tex)))
    return m


def write_textured_glb(path):
    path.write_bytes(trimesh.Scene(checker_sphere(RED, BLUE)).export(file_type="glb"))


def write_vertex_color_glb(path):
    m = trimesh.creation.icosphere(subdivisions=3)
    x, _, z = m.vertices.T  # glTF is Y-up: 6 sectors around Y, so every camera of the orbit sees both colours
    m.visual.vertex_colors = np.where(np.sin(3 * np.arctan2(z, x))[:, None] > 0, (*GREEN, 255), (*YELLOW, 255))
    path.write_bytes(trimesh.Scene(m).export(file_type="glb"))


def foreground(im):
    """Pixels that differ from the background (the corner pixel), as (n, 3) ints."""
    a = np.asarray(im).astype(int).reshape(-1, 3)
    return a[np.abs(a - a[0]).sum(1) > 30]


def shows(fg, rgb, tol=0.25):
    """How many foreground pixels are a shaded version of `rgb` (same chromaticity, any brightness)."""
    c = np.asarray(rgb, float) / sum(rgb)
    chroma = fg / np.maximum(fg.sum(1, keepdims=True), 1)
    return int((np.abs(chroma - c).sum(1) < tol).sum())


def build(tmp_path, folder, name, **kw):
    src = SourceConfig(type="multiview_mesh", path=str(folder), **kw)
    return run_build(tmp_path, [src], name=name)[:2]


@pytest.fixture()
def glbs(tmp_path):
    d = tmp_path / "glb"
    d.mkdir()
    write_textured_glb(d / "ball.glb")
    write_vertex_color_glb(d / "painted.glb")
    (d / "broken.glb").write_bytes(b"glTF\x02\x00\x00\x00garbage that is no GLB chunk")
    (d / "empty.gltf").write_text('{"asset": {"version": "2.0"}, "scenes": [{"nodes": []}], "scene": 0}')
    return d


def test_glb_textures_and_vertex_colors(tmp_path, glbs):
    _, samples = build(tmp_path, glbs, "out")
    by_name = {Path(m["paths"][0]).name: s for m, s in zip(metas(samples), samples)}
    assert sorted(by_name) == ["ball.glb", "painted.glb"]
    for name, (a, b) in {"ball.glb": (RED, BLUE), "painted.glb": (GREEN, YELLOW)}.items():
        images = sample_images(by_name[name])
        assert len(images) == 16
        for im in images[::5]:
            fg = foreground(im)
            assert len(fg) > 30, f"{name}: object not drawn"
            assert shows(fg, a) > 5 and shows(fg, b) > 5, f"{name}: texture colours missing"
    failures = Counter()
    for f in (tmp_path / "out").glob("*.stats.json"):
        failures.update(json.loads(f.read_text())["failures"])
    assert failures == {"mesh_unreadable": 2}  # broken.glb (corrupt) and empty.gltf (no triangles)


def test_untextured_option_draws_object_color(tmp_path, glbs):
    _, samples = build(tmp_path, glbs, "plain", textured=False)
    ball = [s for m, s in zip(metas(samples), samples) if m["paths"][0].endswith("ball.glb")][0]
    fg = foreground(sample_images(ball)[0])
    assert len(fg) > 30 and not (shows(fg, RED) > 5 and shows(fg, BLUE) > 5)


def test_orbit_follows_the_paper(tmp_path, glbs):
    _, samples = build(tmp_path, glbs, "orbits", orbits_per_object=3)
    ms = [m for m in metas(samples) if m["paths"][0].endswith("ball.glb")]
    assert len(ms) == 3
    for m in ms:
        az = np.array(m["azimuths"])
        assert len(az) == 16 and np.allclose(np.diff(az) % 360, 15.0)
        assert 1.5 <= m["radius"] <= 2.2 and -45 <= m["elevation"] <= 45
        idx = m["view_indices"]
        assert m["orbit_views"] == 24 and all((b - a) % 24 == 1 for a, b in zip(idx, idx[1:]))
    assert len({m["elevation"] for m in ms}) == 3  # one elevation per orbit


def test_open_arc_and_bad_orbit_config(tmp_path, glbs):
    _, samples = build(tmp_path, glbs, "arc", orbit_views=8, views=4, step_deg=10.0)
    for m in metas(samples):
        assert len(m["azimuths"]) == 4 and max(m["view_indices"]) < 8 and np.diff(m["view_indices"]).tolist() == [1] * 3
    with pytest.raises(InputError, match="views <= orbit_views"):
        build(tmp_path, glbs, "bad", views=30)
    with pytest.raises(InputError, match="`up` must be"):
        build(tmp_path, glbs, "bad2", up="x")


def obj_vertices(conv):
    text = dict(conv.files)["mesh.obj"].decode()
    return np.array([[float(x) for x in line.split()[1:4]] for line in text.splitlines() if line.startswith("v ")])


def test_up_axis(tmp_path):
    """glTF is Y-up by its spec: a box tall along Y stands along Z; OBJ files follow `up`."""
    tall = trimesh.creation.box(extents=(0.2, 1.0, 0.4))
    (tmp_path / "tall.glb").write_bytes(trimesh.Scene(tall).export(file_type="glb"))
    tall.export(str(tmp_path / "tall.obj"))
    for path, up, extent in (("tall.glb", "z", (0.2, 0.4, 1.0)), ("tall.obj", "y", (0.2, 0.4, 1.0)),
                             ("tall.obj", "z", (0.2, 1.0, 0.4))):
        v = obj_vertices(meshes.convert(str(tmp_path / path), up=up))
        assert np.allclose(v.max(0) - v.min(0), extent), (path, up)


def test_conversion_is_cached_and_normalized(glbs):
    conv = meshes.converted(str(glbs / "ball.glb"))
    assert meshes.converted(str(glbs / "ball.glb")) is conv and conv.textured
    assert any(name.endswith(".png") for name, _ in conv.files)
    v = obj_vertices(conv)
    assert np.isclose((v.max(0) - v.min(0)).max(), 1.0) and np.allclose((v.max(0) + v.min(0)) / 2, 0, atol=1e-6)
    with pytest.raises(meshes.MeshError):
        meshes.convert(str(glbs / "empty.gltf"))


def test_textured_obj(tmp_path):
    d = tmp_path / "obj"
    d.mkdir()
    checker_sphere(GREEN, YELLOW).export(str(d / "dots.obj"))  # with its MTL and texture PNG
    _, samples = build(tmp_path, d, "obj")
    fg = foreground(sample_images(samples[0])[0])
    assert shows(fg, GREEN) > 5 and shows(fg, YELLOW) > 5
    _, plain = build(tmp_path, d, "obj_plain", textured=False)  # pybullet reads the OBJ itself, one colour
    fg = foreground(sample_images(plain[0])[0])
    assert len(fg) > 30 and not (shows(fg, GREEN) > 5 and shows(fg, YELLOW) > 5)


def test_multi_material_scene(tmp_path):
    """Two textured meshes placed by scene nodes: one atlas keeps all four colours."""
    d = tmp_path / "scene"
    d.mkdir()
    sc = trimesh.Scene()
    for x, (a, b) in ((-1.2, (RED, BLUE)), (1.2, (GREEN, YELLOW))):
        sc.add_geometry(checker_sphere(a, b), transform=trimesh.transformations.translation_matrix([x, 0, 0]))
    (d / "two.glb").write_bytes(sc.export(file_type="glb"))
    _, samples = build(tmp_path, d, "scene")
    fg = np.vstack([foreground(im) for im in sample_images(samples[0])[::4]])
    assert all(shows(fg, c) > 5 for c in (RED, BLUE, GREEN, YELLOW))
