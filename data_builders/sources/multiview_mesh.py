"""The `multiview_mesh` source: OBJ / URDF / GLB / glTF meshes rendered around an orbit.

Each unit is one orbit of one mesh: radius U[1.5, 2.2] and one elevation U[-45, 45] deg for the orbit, a
random phase, `orbit_views` views `step_deg` apart (24 x 15 deg: the full circle), of which a sequence
holds `views` consecutive ones from a random start. GLB / glTF / OBJ files go through trimesh
(`data_builders.meshes`): textures and vertex colours are drawn, or with `textured: false` replaced by
one colour per object; URDF files are loaded by pybullet.
"""

from __future__ import annotations

from contextlib import contextmanager
from lvm_base.errors import InputError

from ..config import Skip
from .base import MESH_EXTENSIONS, Source, input_dir


class MultiviewMeshSource(Source):
    def plan(self):
        root = input_dir(self.cfg.path, "multiview_mesh")
        self.check(root)
        meshes = sorted(str(p) for p in root.rglob("*") if p.suffix.lower() in MESH_EXTENSIONS and p.is_file())
        if not meshes:
            raise InputError(f"{root}: no {' / '.join(MESH_EXTENSIONS)} meshes found")
        return [(m, k) for m in meshes for k in range(self.cfg.orbits_per_object)]

    def check(self, root):
        c = self.cfg
        if c.up not in ("z", "y"):
            raise InputError(f"{root}: multiview_mesh `up` must be z or y, got {c.up!r}")
        if not 1 <= c.views <= c.orbit_views or c.step_deg <= 0:
            raise InputError(f"{root}: multiview_mesh needs 1 <= views <= orbit_views and step_deg > 0, got "
                             f"views={c.views}, orbit_views={c.orbit_views}, step_deg={c.step_deg}")

    def orbit(self, rng) -> dict:
        """Radius, elevation and the azimuth of the first view of a window of `views` orbit views."""
        from .. import render

        prm = render.orbit_params(rng)
        n, step = self.cfg.orbit_views, self.cfg.step_deg
        closed = abs(n * step - 360.0) < 1e-6  # a closed orbit wraps; an open arc's window stays inside it
        start = int(rng.integers(n if closed else n - self.cfg.views + 1))
        return {"radius": prm["radius"], "elevation": prm["elevation"],
                "start_azimuth": (prm["start_azimuth"] + start * step) % 360.0,
                "view_indices": [(start + i) % n for i in range(self.cfg.views)]}

    @contextmanager
    def scene_object(self, path: str):
        """What render_orbit draws for `path`: a MeshObject (converted by trimesh when needed) or the URDF."""
        from .. import meshes

        if path.lower().endswith(".urdf"):
            with meshes.uncached_files():
                yield path
        else:  # OBJ too: pybullet would draw an OBJ's own texture even with a colour set
            with meshes.prepared(path, self.cfg.up, self.cfg.textured) as obj:
                yield obj

    def make(self, unit, rng, seed):
        from .. import render

        path, k = unit
        orb = self.orbit(rng)
        try:
            with self.scene_object(path) as obj:
                o = render.render_orbit(obj, size=self.size, views=self.cfg.views, step_deg=self.cfg.step_deg,
                                        radius=orb["radius"], elevation=orb["elevation"],
                                        start_azimuth=orb["start_azimuth"], urdf=path.lower().endswith(".urdf"))
        except Exception as e:  # pybullet.error / trimesh's and the GLB parser's errors / OSError: unreadable
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise Skip("mesh_unreadable", f"{path} ({why})") from None
        return [self.seq(o["images"], "multiview", paths=[path], azimuths=o["azimuths"], elevation=o["elevation"],
                         radius=o["radius"], step_deg=self.cfg.step_deg, orbit=k, orbit_views=self.cfg.orbit_views,
                         view_indices=orb["view_indices"])]
