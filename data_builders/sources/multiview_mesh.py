"""The `multiview_mesh` source: OBJ / URDF meshes rendered around an orbit."""

from __future__ import annotations

from pathlib import Path

from tokenizer.common.errors import InputError

from ..config import Skip
from .base import MESH_EXTENSIONS, Source, input_dir


class MultiviewMeshSource(Source):
    def plan(self):
        root = input_dir(self.cfg.path, "multiview_mesh")
        meshes = sorted(str(p) for p in root.rglob("*") if p.suffix.lower() in MESH_EXTENSIONS and p.is_file())
        if not meshes:
            raise InputError(f"{root}: no .obj or .urdf meshes found")
        return [(m, k) for m in meshes for k in range(self.cfg.orbits_per_object)]

    def make(self, unit, rng, seed):
        from .. import render

        path, k = unit
        try:
            if path.lower().endswith(".urdf"):
                o = render.render_orbit(path, size=self.size, seed=seed, views=self.cfg.views,
                                        step_deg=self.cfg.step_deg, urdf=True)
            else:
                obj = render.MeshObject(Path(path).stem, path, self.cfg.up, False, render.object_color(Path(path).stem))
                o = render.render_orbit(obj, size=self.size, seed=seed, views=self.cfg.views,
                                        step_deg=self.cfg.step_deg)
        except Exception as e:  # pybullet.error / ValueError / OSError: a mesh pybullet cannot load
            raise Skip("mesh_unreadable", f"{path} ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
        return [self.seq(o["images"], "multiview", paths=[path], azimuths=o["azimuths"], elevation=o["elevation"],
                         radius=o["radius"], step_deg=self.cfg.step_deg, orbit=k)]
