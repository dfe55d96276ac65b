"""The built-in renderer: pybullet TinyRenderer scenes of the meshes shipped in `pybullet_data`, headless.

Everything here is deterministic given a seed, needs only pip packages, and returns plain PIL images and
numpy arrays, so other parts of the project (prompt examples, the demo) can call it directly:

    from data_builders import objects, render
    objs = objects.list_objects("heldout")                  # train / held-out split by object
    orbit = render.render_orbit(objs[0], size=128, seed=0)  # 16 views, 15 deg azimuth steps
    video = render.render_video(seed=3, size=128)           # physics: drop / roll / collide
    view = render.render_object_view(objs[0], seed=1)       # one view with depth, segmentation, normals
    inp, out = render.task_pair(view, "depth", rng)         # (input image, target image) of a task

Camera conventions: Z is up; a mesh is normalized to a unit box (largest side 1) centred at the origin,
Y-up meshes rotated upright; the multi-view camera looks at the origin from radius U[1.5, 2.2] at one
elevation U[-45, 45] deg per object. Metric depth is recovered from the nonlinear z-buffer as
far*near / (far - (far - near) * z).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from . import annotations as ann
from .objects import MeshObject, data_path, get_object, list_objects, mesh_bounds

FOV = 60.0
NEAR, FAR = 0.05, 20.0


# ---- one pybullet client per process ----

_CLIENT = None


def client() -> int:
    global _CLIENT
    import pybullet as p

    if _CLIENT is None or not p.isConnected(_CLIENT):
        _CLIENT = p.connect(p.DIRECT)
        p.setAdditionalSearchPath(str(data_path()), physicsClientId=_CLIENT)
    return _CLIENT


def _reset(gravity: bool = False) -> int:
    import pybullet as p

    cid = client()
    p.resetSimulation(physicsClientId=cid)
    _BOXES.clear()
    p.setGravity(0, 0, -9.81 if gravity else 0, physicsClientId=cid)
    return cid


def add_object(obj: MeshObject, size: float = 1.0, position=(0, 0, 0), orientation=(0, 0, 0, 1),
               mass: float = 0.0, color=None) -> int:
    """Add `obj` scaled so its largest side is `size`, its box centre at `position`; returns the body id."""
    import pybullet as p

    cid = client()
    lo, hi = mesh_bounds(obj.path, obj.up)
    scale = size / float(max(hi - lo))
    center = (lo + hi) / 2 * scale
    frame_orn = p.getQuaternionFromEuler([math.pi / 2, 0, 0]) if obj.up == "y" else (0, 0, 0, 1)
    kw = dict(fileName=obj.path, meshScale=[scale] * 3, visualFramePosition=(-center).tolist(),
              visualFrameOrientation=frame_orn, physicsClientId=cid)
    if not obj.textured or color is not None:
        kw["rgbaColor"] = list(color or obj.color)
    vis = p.createVisualShape(p.GEOM_MESH, **kw)
    half = (hi - lo) * scale / 2
    col = -1
    if mass > 0:
        col = p.createCollisionShape(p.GEOM_MESH, fileName=obj.path, meshScale=[scale] * 3,
                                     collisionFramePosition=(-center).tolist(),
                                     collisionFrameOrientation=frame_orn, physicsClientId=cid)
    body = p.createMultiBody(baseMass=mass, baseCollisionShapeIndex=col, baseVisualShapeIndex=vis,
                             basePosition=list(position), baseOrientation=list(orientation), physicsClientId=cid)
    _BOXES[body] = half  # visual-only bodies have no collision AABB; keypoints need the mesh box
    return body


_BOXES: dict[int, np.ndarray] = {}


def add_urdf(path: str, size: float = 1.0) -> int:
    """Load a URDF scaled so its whole AABB's largest side is `size`, centred at the origin."""
    import pybullet as p

    cid = client()
    body = p.loadURDF(str(path), useFixedBase=True, physicsClientId=cid)
    lo, hi = _body_aabb(body)
    scale = size / max(float(max(hi - lo)), 1e-9)
    p.removeBody(body, physicsClientId=cid)
    body = p.loadURDF(str(path), useFixedBase=True, globalScaling=scale, physicsClientId=cid)
    lo, hi = _body_aabb(body)
    pos, orn = p.getBasePositionAndOrientation(body, physicsClientId=cid)
    p.resetBasePositionAndOrientation(body, (np.asarray(pos) - (lo + hi) / 2).tolist(), orn, physicsClientId=cid)
    return body


def _body_aabb(body: int) -> tuple[np.ndarray, np.ndarray]:
    """World AABB of a body: its collision AABBs plus the boxes of its OBJ visual meshes (a URDF may have
    visuals only, whose collision AABB is a dummy point)."""
    import pybullet as p

    cid = client()
    pts = []
    for link in range(-1, p.getNumJoints(body, physicsClientId=cid)):
        lo, hi = p.getAABB(body, link, physicsClientId=cid)
        if max(np.subtract(hi, lo)) > 0.01:
            pts += [lo, hi]
    for vs in p.getVisualShapeData(body, physicsClientId=cid):
        link, gtype, dims, fname, lpos, lorn = vs[1], vs[2], vs[3], vs[4], vs[5], vs[6]
        fname = fname.decode() if isinstance(fname, bytes) else fname
        if gtype != p.GEOM_MESH or not fname.lower().endswith(".obj") or not Path(fname).is_file():
            continue
        lo, hi = mesh_bounds(fname)
        corners = np.array([[(hi if (i >> a) & 1 else lo)[a] for a in range(3)] for i in range(8)]) * np.asarray(dims)
        if link == -1:
            wpos, worn = p.getBasePositionAndOrientation(body, physicsClientId=cid)
        else:
            st = p.getLinkState(body, link, physicsClientId=cid)
            wpos, worn = st[4], st[5]
        pos, orn = p.multiplyTransforms(wpos, worn, lpos, lorn)
        rot = np.asarray(p.getMatrixFromQuaternion(orn)).reshape(3, 3)
        w = corners @ rot.T + np.asarray(pos)
        pts += [w.min(0), w.max(0)]
    if not pts:
        raise ValueError("URDF has no collision geometry or OBJ visual mesh to measure")
    pts = np.asarray(pts)
    return pts.min(0), pts.max(0)


@dataclass
class View:
    """One rendered camera view: RGB + metric depth + object-id segmentation (background -1)."""

    rgb: Image.Image
    depth: np.ndarray
    seg: np.ndarray
    eye: tuple
    target: tuple
    meta: dict = field(default_factory=dict)

    @property
    def mask(self) -> np.ndarray:
        return self.seg >= 0

    def normals(self) -> np.ndarray:
        return ann.normals_from_depth(self.depth, FOV)


def camera_eye(radius: float, azimuth_deg: float, elevation_deg: float, target=(0, 0, 0)) -> tuple:
    a, e = math.radians(azimuth_deg), math.radians(elevation_deg)
    return (target[0] + radius * math.cos(e) * math.cos(a), target[1] + radius * math.cos(e) * math.sin(a),
            target[2] + radius * math.sin(e))


def render_camera(eye, target=(0, 0, 0), size: int = 128, light=None, ignore_bodies=()) -> View:
    """Render the current scene from `eye` looking at `target` (Z up) with TinyRenderer."""
    import pybullet as p

    cid = client()
    eye, target = tuple(float(x) for x in eye), tuple(float(x) for x in target)
    fwd = np.subtract(target, eye)
    up = (0, 0, 1) if abs(fwd[2]) < 0.999 * np.linalg.norm(fwd) else (0, 1, 0)
    view = p.computeViewMatrix(eye, target, up, physicsClientId=cid)
    proj = p.computeProjectionMatrixFOV(FOV, 1.0, NEAR, FAR, physicsClientId=cid)
    light = light if light is not None else (eye[0] + 1.0, eye[1] - 1.0, eye[2] + 3.0)
    w, h, rgba, zbuf, seg = p.getCameraImage(
        size, size, view, proj, renderer=p.ER_TINY_RENDERER, lightDirection=list(light), shadow=0,
        lightAmbientCoeff=0.45, lightDiffuseCoeff=0.6, lightSpecularCoeff=0.05, physicsClientId=cid)
    rgb = np.asarray(rgba, np.uint8).reshape(h, w, 4)[..., :3]
    z = np.asarray(zbuf, np.float64).reshape(h, w)
    depth = FAR * NEAR / (FAR - (FAR - NEAR) * z)
    seg = np.asarray(seg, np.int64).reshape(h, w)
    seg = np.where(seg < 0, -1, seg & ((1 << 24) - 1))
    for b in ignore_bodies:  # e.g. the ground plane: not an object to segment
        seg = np.where(seg == b, -1, seg)
    return View(Image.fromarray(np.ascontiguousarray(rgb), "RGB"), depth, seg, eye, target)


# ---- multi-view orbits ----

def orbit_params(rng: np.random.Generator) -> dict:
    """The per-object orbit recipe: radius U[1.5, 2.2], elevation U[-45, 45] deg, random start azimuth."""
    return {"radius": float(rng.uniform(1.5, 2.2)), "elevation": float(rng.uniform(-45.0, 45.0)),
            "start_azimuth": float(rng.uniform(0.0, 360.0))}


def render_orbit(obj: MeshObject | str, size: int = 128, seed: int = 0, views: int = 16, step_deg: float = 15.0,
                 radius: float | None = None, elevation: float | None = None, start_azimuth: float | None = None,
                 urdf: bool = False) -> dict:
    """Views of one object around a circle: azimuth start + i*step (i < views), constant radius/elevation.

    Returns {"views": [View], "images": [PIL], "azimuths": [...], "radius", "elevation", "object"}.
    `obj` is a MeshObject, a catalog name, an OBJ path, or (urdf=True) a URDF path.
    """
    rng = np.random.default_rng(seed)
    prm = orbit_params(rng)
    radius = prm["radius"] if radius is None else radius
    elevation = prm["elevation"] if elevation is None else elevation
    start = prm["start_azimuth"] if start_azimuth is None else start_azimuth
    _reset()
    if urdf:
        add_urdf(str(obj))
        name = Path(str(obj)).stem
    else:
        obj = obj if isinstance(obj, MeshObject) else get_object(obj)
        add_object(obj)
        name = obj.name
    azs = [float((start + i * step_deg) % 360.0) for i in range(views)]
    vs = [render_camera(camera_eye(radius, a, elevation), size=size) for a in azs]
    return {"views": vs, "images": [v.rgb for v in vs], "azimuths": azs, "radius": float(radius),
            "elevation": float(elevation), "object": name}


def render_object_view(obj: MeshObject | str, seed: int = 0, size: int = 128, ground: bool | None = None,
                       color: tuple | None = None) -> View:
    """One random view of one object (optionally on a ground plane) with depth / segmentation; `color`
    (RGBA) replaces the object's own."""
    import pybullet as p

    rng = np.random.default_rng(seed)
    obj = obj if isinstance(obj, MeshObject) else get_object(obj)
    ground = bool(rng.random() < 0.5) if ground is None else ground
    prm = orbit_params(rng)
    _reset()
    ignore = ()
    if ground:
        plane = p.loadURDF("plane.urdf", [0, 0, -0.5], physicsClientId=client())
        ignore = (plane,)
        prm["elevation"] = abs(prm["elevation"]) * 0.8 + 10.0
    body = add_object(obj, orientation=p.getQuaternionFromEuler([0, 0, float(rng.uniform(0, 2 * math.pi))]),
                      color=color)
    v = render_camera(camera_eye(prm["radius"], prm["start_azimuth"], prm["elevation"]), size=size,
                      ignore_bodies=ignore)
    v.meta = {"object": obj.name, "radius": prm["radius"], "elevation": prm["elevation"],
              "azimuth": prm["start_azimuth"], "ground": ground, "body": body}
    return v


# ---- physics videos ----

SCENARIOS = ("drop", "roll", "collide")


def render_video(seed: int = 0, size: int = 128, n_frames: int = 16, objects: list[MeshObject] | None = None,
                 split: str = "train", scenario: str | None = None, moving_camera: bool | None = None,
                 steps_per_frame: int = 8) -> dict:
    """A short physics clip on a ground plane: objects dropped, rolling, or thrown into each other.

    The simulation runs at 240 Hz; one frame every `steps_per_frame` steps (8 -> 30 fps). The camera is
    fixed or orbits slowly. Returns {"views": [View], "images": [PIL], "meta": {...}}.
    """
    import pybullet as p

    rng = np.random.default_rng(seed)
    scenario = scenario or SCENARIOS[int(rng.integers(len(SCENARIOS)))]
    moving_camera = bool(rng.random() < 0.5) if moving_camera is None else moving_camera
    if objects is None:
        pool = list_objects(split)
        k = {"drop": int(rng.integers(1, 4)), "roll": 1, "collide": 2}[scenario]
        objects = [pool[int(i)] for i in rng.choice(len(pool), size=k, replace=False)]
    cid = _reset(gravity=True)
    plane = p.loadURDF("plane.urdf", physicsClientId=cid)
    bodies = []
    for i, obj in enumerate(objects):
        sz = float(rng.uniform(0.3, 0.5))
        orn = p.getQuaternionFromEuler(rng.uniform(0, 2 * math.pi, size=3).tolist())
        if scenario == "drop":
            pos = [rng.uniform(-0.3, 0.3), rng.uniform(-0.3, 0.3), 0.6 + 0.5 * i + rng.uniform(0, 0.3)]
            vel = [0, 0, 0]
        elif scenario == "roll":
            pos = [-0.6, rng.uniform(-0.2, 0.2), sz / 2 + 0.02]
            vel = [rng.uniform(2.0, 3.5), rng.uniform(-0.5, 0.5), 0]
        else:
            side = -1 if i == 0 else 1
            pos = [0.7 * side, rng.uniform(-0.1, 0.1), 0.3 + rng.uniform(0, 0.2)]
            vel = [-side * rng.uniform(2.0, 3.0), 0, rng.uniform(1.0, 2.0)]
        b = add_object(obj, size=sz, position=pos, orientation=orn, mass=1.0)
        p.resetBaseVelocity(b, vel, rng.uniform(-3, 3, size=3).tolist(), physicsClientId=cid)
        p.changeDynamics(b, -1, restitution=0.4, lateralFriction=0.6, rollingFriction=0.001, physicsClientId=cid)
        bodies.append(b)
    p.changeDynamics(plane, -1, restitution=0.5, physicsClientId=cid)
    radius = float(rng.uniform(1.2, 1.6))  # close enough that 0.3-0.5 sized objects fill part of the frame
    elev = float(rng.uniform(20, 40))
    az0 = float(rng.uniform(0, 360))
    az_speed = float(rng.uniform(2, 5)) * (1 if rng.random() < 0.5 else -1) if moving_camera else 0.0
    target = (0.0, 0.0, 0.15)
    views, azs = [], []
    for f in range(n_frames):
        if f:
            for _ in range(steps_per_frame):
                p.stepSimulation(physicsClientId=cid)
        az = az0 + az_speed * f
        views.append(render_camera(camera_eye(radius, az, elev, target), target, size=size, ignore_bodies=(plane,)))
        azs.append(float(az % 360))
    meta = {"scenario": scenario, "objects": [o.name for o in objects], "moving_camera": moving_camera,
            "camera": {"radius": radius, "elevation": elev, "azimuths": azs}, "fps": 240 / steps_per_frame,
            "steps_per_frame": steps_per_frame}
    return {"views": views, "images": [v.rgb for v in views], "meta": meta}


# ---- tasks: (input image, target image) from one rendered view ----

TASKS = ("segmentation", "depth", "normals", "edges", "colorization", "inpainting", "boxes", "keypoints")
ANNOTATIONS = ("segmentation", "depth", "normals", "edges")  # views of one image as m-tuples


def annotation_image(view: View, kind: str) -> Image.Image:
    """An annotation of a rendered view drawn as an image: segmentation / depth / normals / edges."""
    if kind == "segmentation":
        return ann.segmentation_image(view.seg)
    if kind == "depth":
        return ann.depth_image(view.depth, view.mask)
    if kind == "normals":
        return ann.normals_image(view.normals(), view.mask)
    if kind == "edges":
        return ann.edges_image(view.rgb)
    raise ValueError(f"unknown annotation {kind!r}; expected one of {ANNOTATIONS}")


def _box_keypoints(view: View, body: int) -> np.ndarray:
    """Pixel positions of the 8 corners of a body's 3-D bounding box, as seen by the view's camera."""
    import pybullet as p

    half = _BOXES[body]
    pos, orn = p.getBasePositionAndOrientation(body, physicsClientId=client())
    rot = np.asarray(p.getMatrixFromQuaternion(orn)).reshape(3, 3)
    local = np.array([[half[a] if (i >> a) & 1 else -half[a] for a in range(3)] for i in range(8)])
    corners = local @ rot.T + np.asarray(pos)
    eye, tgt = np.asarray(view.eye), np.asarray(view.target)
    f = tgt - eye
    f /= np.linalg.norm(f)
    r = np.cross(f, [0, 0, 1.0])
    r /= np.linalg.norm(r) + 1e-12
    u = np.cross(r, f)
    rel = corners - eye
    x, y, z = rel @ r, rel @ u, rel @ f
    size = view.rgb.size[0]
    fpx = 0.5 * size / math.tan(math.radians(FOV) / 2)
    return np.stack([size / 2 + fpx * x / z, size / 2 - fpx * y / z], axis=1)


def task_pair(view: View, task: str, rng: np.random.Generator) -> tuple[Image.Image, Image.Image]:
    """(input, target) images of `task` for a rendered view (call right after rendering it)."""
    if task in ANNOTATIONS:
        return view.rgb, annotation_image(view, task)
    if task == "colorization":
        return ann.colorization_input(view.rgb), view.rgb
    if task == "inpainting":
        return ann.inpainting_input(view.rgb, rng)[0], view.rgb
    if task == "boxes":
        boxes, labels = ann.boxes_from_segmentation(view.seg)
        return view.rgb, ann.draw_boxes(view.rgb, boxes, labels)
    if task == "keypoints":
        pts = _box_keypoints(view, view.meta.get("body", 0))
        return view.rgb, ann.draw_skeleton(view.rgb, pts, ann.BOX_SKELETON)
    raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
