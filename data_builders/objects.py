"""The catalog of built-in objects: the meshes shipped in `pybullet_data` (the named ones and the procedural
`random_urdfs`), their train / held-out split by object, their colours (a stable hue per name, or one drawn
per sequence), and the OBJ vertex bounds that meshes are scaled by. It is apart from `render` because none of
it needs a renderer: it reads file names, paths and vertices only, so choosing objects and colours costs no
pybullet scene, and `render` (the scenes, cameras, orbits, videos and annotation drawing) imports it.
"""

from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HELDOUT_EVERY = 8  # 1 object in 8 is held out (by a stable hash of its name), never used for training

# Named meshes of pybullet_data: name -> (relative path, up axis, keep its own material/texture).
_NAMED = {
    "duck": ("duck.obj", "y", True),
    "teddy": ("teddy2_VHACD_CHs.obj", "y", False),
    "bunny": ("bunny.obj", "y", False),
    "soccerball": ("soccerball.obj", "z", True),
    "torus": ("torus/torus_textured.obj", "z", True),
    "lego": ("lego/lego.obj", "z", False),
    "jenga": ("jenga/jenga.obj", "z", True),
    "mug": ("objects/mug.obj", "z", False),
    "cube": ("cube.obj", "z", True),
    "sphere": ("sphere_smooth.obj", "z", False),
    "cylinder": ("toys/cylinder.obj", "z", False),
    "prism": ("toys/prism.obj", "z", False),
    "shape_sorter": ("toys/shape_sorter.obj", "z", True),
    "concave_box": ("toys/concave_box.obj", "z", False),
}
# Named objects forced into the held-out split so evaluation always has recognizable unseen shapes.
_HELDOUT_NAMED = {"teddy", "torus"}
# ... and the rest of the named ones always train (the hash rule applies to the procedural objects).


@dataclass(frozen=True)
class MeshObject:
    name: str
    path: str
    up: str = "z"
    textured: bool = False
    color: tuple = (0.8, 0.8, 0.8, 1.0)


def data_path() -> Path:
    import pybullet_data

    return Path(pybullet_data.getDataPath())


def hue_color(h: float) -> tuple:
    """The renderer's saturated RGBA colour of hue `h` in [0, 1)."""
    import colorsys

    r, g, b = colorsys.hsv_to_rgb(h, 0.55, 0.9)
    return (r, g, b, 1.0)


def object_color(name: str) -> tuple:
    """A stable, saturated color per object name."""
    return hue_color((zlib.crc32(name.encode()) % 1000) / 1000.0)


def random_color(rng: np.random.Generator) -> tuple:
    """A colour drawn per sequence, not per name: colorization examples then carry the only clue to it."""
    return hue_color(float(rng.random()))


def is_heldout(name: str) -> bool:
    if name in _NAMED:
        return name in _HELDOUT_NAMED
    return zlib.crc32(name.encode()) % HELDOUT_EVERY == 0


@functools.lru_cache(maxsize=None)
def _catalog() -> tuple[MeshObject, ...]:
    root = data_path()
    objs = []
    for name, (rel, up, textured) in _NAMED.items():
        if (root / rel).is_file():
            objs.append(MeshObject(name, str(root / rel), up, textured, object_color(name)))
    for d in sorted((root / "random_urdfs").glob("[0-9][0-9][0-9]")):
        obj = d / f"{d.name}.obj"
        if obj.is_file():
            name = f"random_{d.name}"
            objs.append(MeshObject(name, str(obj), "z", False, object_color(name)))
    return tuple(objs)


def list_objects(split: str = "train") -> list[MeshObject]:
    """Built-in objects of a split: 'train', 'heldout' or 'all' (sorted by name, stable across machines)."""
    if split not in ("train", "heldout", "all"):
        raise ValueError(f"split must be 'train', 'heldout' or 'all', got {split!r}")
    objs = _catalog()
    if split == "all":
        return list(objs)
    want = split == "heldout"
    return [o for o in objs if is_heldout(o.name) == want]


def get_object(name_or_path: str) -> MeshObject:
    """A catalog object by name, or any OBJ file path (Z-up assumed, stable color from its name)."""
    for o in _catalog():
        if o.name == name_or_path:
            return o
    p = Path(name_or_path)
    if p.suffix.lower() == ".obj" and p.is_file():
        return MeshObject(p.stem, str(p), "z", False, object_color(p.stem))
    raise ValueError(f"unknown built-in object {name_or_path!r}")


@functools.lru_cache(maxsize=4096)
def mesh_bounds(path: str, up: str = "z") -> tuple[np.ndarray, np.ndarray]:
    """(min, max) corners of an OBJ's vertices, after rotating Y-up meshes to Z-up."""
    vs = []
    with open(path, "rb") as f:
        for line in f:
            if line.startswith(b"v "):
                parts = line.split()
                vs.append((float(parts[1]), float(parts[2]), float(parts[3])))
    if not vs:
        raise ValueError(f"{path}: OBJ file has no vertices")
    v = np.asarray(vs)
    if up == "y":
        v = np.stack([v[:, 0], -v[:, 2], v[:, 1]], axis=1)  # +90 deg about X: y -> z
    return v.min(0), v.max(0)
