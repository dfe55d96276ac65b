"""Mesh files trimesh reads (GLB / glTF / OBJ, with textures or vertex colours) made ready for the renderer.

pybullet's TinyRenderer draws one diffuse texture per OBJ visual shape (one material's `map_Kd` for all
its faces; no vertex colours, no GLB), so a mesh file becomes one OBJ + MTL + PNG: the scene's meshes are
flattened with their transforms, turned Z-up (glTF is Y-up by its spec; OBJ files follow `up`), centred
and scaled to a unit box; each part's base colour (a PBR or simple material's texture times its factor,
a plain colour, vertex or face colours) becomes a texture, and the textures are packed into one atlas
by trimesh. Vertex colours are averaged per face (dense scanned meshes lose little).

    with meshes.prepared("chair.glb") as obj:           # an objects.MeshObject, valid inside the block
        orbit = render.render_orbit(obj, size=256, seed=0)

Conversions are cached in memory per process (the last CACHE_SIZE, keyed by path, mtime, size and options),
so the orbits of one mesh convert it once; the files live in a temp folder for the block only.
"""

from __future__ import annotations

import os
import tempfile
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from . import render
from .objects import MeshObject, object_color

GLTF_EXTENSIONS = (".glb", ".gltf")
MAX_TEXTURE = 2048  # texels a side: renders are a few hundred pixels, Objaverse textures up to 8K
BLOCK = 4  # texels a side per baked colour, so the atlas packer's sub-texel UV shifts stay inside it
MAX_COLORS = 65536  # more distinct baked colours are quantized to 5 bits a channel
CACHE_SIZE = 4
GREY = (102, 102, 102, 255)  # trimesh's default colour, for the uncoloured parts of a coloured mesh


class MeshError(ValueError):
    """A mesh file with nothing to render (no triangles, zero size)."""


@dataclass(frozen=True)
class Converted:
    """A mesh ready for pybullet: the (file name, bytes) pairs of one OBJ with its MTL and PNG, if textured."""

    name: str
    files: tuple
    textured: bool

    def write(self, folder: str) -> MeshObject:
        for fname, data in self.files:
            Path(folder, fname).write_bytes(data)
        return MeshObject(self.name, str(Path(folder, "mesh.obj")), "z", self.textured, object_color(self.name))


def read_parts(path: str) -> list:
    """The triangle meshes of a file's scene, node transforms applied."""
    import trimesh

    scene = trimesh.load(path, force="scene", process=False)
    parts = [g for g in scene.dump() if isinstance(g, trimesh.Trimesh) and len(g.faces)]
    if not parts:
        raise MeshError("no triangles")
    return parts


def normalize(parts: list, up: str) -> None:
    """Rotate Y-up parts to Z-up (+90 deg about X, as objects.mesh_bounds) and fit them in a unit box at 0."""
    import trimesh

    if up == "y":
        rot = trimesh.transformations.rotation_matrix(np.pi / 2, [1, 0, 0])
        for g in parts:
            g.apply_transform(rot)
    v = np.vstack([g.vertices for g in parts])
    lo, hi = v.min(0), v.max(0)
    extent = float(max(hi - lo))
    if not np.isfinite(extent) or extent <= 0:
        raise MeshError("zero size")
    for g in parts:
        g.apply_translation(-(lo + hi) / 2)
        g.apply_scale(1.0 / extent)


def limit_size(img: Image.Image) -> Image.Image:
    if max(img.size) <= MAX_TEXTURE:
        return img
    s = MAX_TEXTURE / max(img.size)
    return img.resize((max(1, round(img.width * s)), max(1, round(img.height * s))), Image.BOX)


def base_color(material) -> Image.Image | tuple | None:
    """A material's base colour: its texture (times its colour factor), a plain RGBA colour, or None."""
    from trimesh.visual import color
    from trimesh.visual.material import PBRMaterial

    if isinstance(material, PBRMaterial):
        image, factor = material.baseColorTexture, material.baseColorFactor
        if image is None:
            if factor is None:
                return None
            # glTF colour factors are linear; stored colours (textures, our PNGs) are sRGB
            c = color.to_float(factor).reshape(4)
            return tuple(np.round(np.append(color.linear_to_srgb(c[:3]), c[3]) * 255).astype(np.uint8))
        image = limit_size(image).convert("RGB")
        if factor is not None and np.any(np.asarray(factor)[:3] < 255):
            scaled = np.asarray(image, np.float64) * (color.to_float(factor).reshape(4)[:3])
            image = Image.fromarray(np.round(scaled).astype(np.uint8))
        return image
    image = getattr(material, "image", None)
    if image is not None:
        return limit_size(image).convert("RGB")
    diffuse = getattr(material, "diffuse", None)
    return None if diffuse is None else tuple(color.to_rgba(diffuse).reshape(4))


def palette(colors: np.ndarray) -> tuple[Image.Image, np.ndarray]:
    """A texture holding `colors` ((n, 4) uint8) as BLOCK x BLOCK squares, and each colour's UV."""
    unique, inverse = np.unique(colors, axis=0, return_inverse=True)
    if len(unique) > MAX_COLORS:
        return palette(colors // 8 * 8 + 4)
    side = int(np.ceil(np.sqrt(len(unique))))
    grid = np.zeros((side * side, 4), np.uint8)
    grid[:len(unique)] = unique
    img = grid.reshape(side, side, 4)[..., :3].repeat(BLOCK, 0).repeat(BLOCK, 1)
    i = np.arange(len(unique))
    uv = np.stack([(i % side + 0.5) / side, 1.0 - (i // side + 0.5) / side], 1)  # v = 0 is the bottom row
    return Image.fromarray(img), uv[inverse.ravel()]


def face_colored(g, face_colors: np.ndarray):
    """`g` with every face on vertices of its own, textured by a palette of its face colours."""
    import trimesh
    from trimesh.visual import TextureVisuals
    from trimesh.visual.material import SimpleMaterial

    flat = trimesh.Trimesh(g.vertices[g.faces].reshape(-1, 3), np.arange(3 * len(g.faces)).reshape(-1, 3),
                           process=False)
    img, uv = palette(np.repeat(np.asarray(face_colors, np.uint8), 3, axis=0))
    flat.visual = TextureVisuals(uv=uv, material=SimpleMaterial(image=img))
    return flat


def plain(g, rgba):
    """`g` in one colour."""
    return face_colored(g, np.tile(np.asarray(rgba, np.uint8), (len(g.faces), 1)))


def textured_part(g, simple):
    """`g` with a SimpleMaterial texture and UVs carrying its colours, or None when it has no colours.

    `simple(material)` gives a material's base colour: a SimpleMaterial with the texture, an RGBA tuple, or None."""
    from trimesh.visual import TextureVisuals, color

    vis = g.visual
    if vis.kind == "texture":
        base = simple(vis.material)
        if not isinstance(base, tuple) and base is not None:
            if vis.uv is not None and len(vis.uv) == len(g.vertices):
                g.visual = TextureVisuals(uv=vis.uv, material=base)
                return g
            base = tuple(np.asarray(base.image).reshape(-1, 3).mean(0).astype(np.uint8)) + (255,)  # no UVs
        if "color" in vis.vertex_attributes:  # glTF COLOR_0 next to an untextured material
            vc = color.to_rgba(vis.vertex_attributes["color"])
            return face_colored(g, color.vertex_to_face_color(vc, g.faces))
        return None if base is None else plain(g, base)
    if vis.kind in ("vertex", "face"):
        return face_colored(g, vis.face_colors)
    return None


def textured_mesh(parts: list):
    """One mesh of all parts with one texture atlas, or None when no part has colours."""
    from trimesh.visual import TextureVisuals
    from trimesh.visual.material import SimpleMaterial, pack

    seen = {}  # parts often share a material: bake (and later hash) its texture once

    def simple(material):
        if id(material) not in seen:
            base = base_color(material)
            seen[id(material)] = (material, SimpleMaterial(image=base) if isinstance(base, Image.Image) else base)
        return seen[id(material)][1]

    done = [textured_part(g, simple) for g in parts]
    if all(d is None for d in done):
        return None
    groups = {}  # parts by material, so the packer sees (and hashes) each texture once
    for d, g in zip(done, parts):
        d = d if d is not None else plain(g, GREY)
        groups.setdefault(id(d.visual.material), []).append(d)
    groups = list(groups.values())
    uvs = [np.vstack([d.visual.uv for d in grp]) for grp in groups]
    material, uv = pack([grp[0].visual.material for grp in groups], uvs,
                        max_tex_size_individual=MAX_TEXTURE, max_tex_size_fused=MAX_TEXTURE)
    mesh = untextured_mesh([d for grp in groups for d in grp])
    image = limit_size(material.image).convert("RGB")
    mesh.visual = TextureVisuals(uv=uv, material=SimpleMaterial(image=image, name="texture"))
    return mesh


def untextured_mesh(parts: list):
    """All parts' triangles in one mesh, vertices in part order (so stacked per-part UVs line up)."""
    import trimesh

    offsets = np.cumsum([0] + [len(g.vertices) for g in parts[:-1]])
    return trimesh.Trimesh(np.vstack([g.vertices for g in parts]),
                           np.vstack([g.faces + o for g, o in zip(parts, offsets)]), process=False)


def convert(path: str, up: str = "z", textured: bool = True) -> Converted:
    """Read, normalize and export `path` (no cache); a file trimesh cannot read raises its error."""
    from trimesh.exchange.obj import export_obj

    parts = read_parts(path)
    normalize(parts, "y" if Path(path).suffix.lower() in GLTF_EXTENSIONS else up)
    mesh = textured_mesh(parts) if textured else None
    if mesh is None:
        mesh = untextured_mesh(parts)
    kind = mesh.visual.kind
    text, files = export_obj(mesh, include_normals=False, include_color=False, include_texture=kind == "texture",
                             return_texture=True, mtl_name="mesh.mtl")
    files = {"mesh.obj": text.encode(), **files}
    return Converted(Path(path).stem, tuple(sorted(files.items())), kind == "texture")


_CACHE: OrderedDict = OrderedDict()


def converted(path: str, up: str = "z", textured: bool = True) -> Converted:
    """`convert(path)`, from the per-process cache when the file is unchanged."""
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_mtime_ns, st.st_size, up, textured)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    conv = _CACHE[key] = convert(path, up, textured)
    while len(_CACHE) > CACHE_SIZE:
        _CACHE.popitem(last=False)
    return conv


@contextmanager
def uncached_files():
    """Load meshes without pybullet's file cache inside the block.

    pybullet keeps every OBJ and texture it parses, keyed by file name, for the life of the process
    (resetSimulation does not clear it): right for the few built-in meshes, a leak over thousands of
    dataset meshes, and stale textures for a file rewritten under the same name."""
    import pybullet as p

    cid = render.client()
    p.setPhysicsEngineParameter(enableFileCaching=0, physicsClientId=cid)
    try:
        yield
    finally:
        p.setPhysicsEngineParameter(enableFileCaching=1, physicsClientId=cid)


@contextmanager
def prepared(path: str, up: str = "z", textured: bool = True):
    """The converted mesh as an objects.MeshObject whose files exist (and load uncached) inside the block."""
    conv = converted(path, up, textured)
    with tempfile.TemporaryDirectory(prefix="lvm-mesh-") as folder, uncached_files():
        yield conv.write(folder)
