"""Sources of visual sequences: the built-in renderer and local files.

A source has `plan() -> list of units` (runs once, in the launching process; deterministic order; a
missing, unreadable or empty input folder is an InputError) and `make(unit, rng, seed) -> list of
Sequence | Skip` (runs in a worker; bad inputs come back as `Skip(reason, item)` and are counted).

Types (config `sources[i].type`):
  builtin          pybullet scenes: multiview orbits, physics videos, task pairs, tuples, annotated videos
  images           single images from a folder (recursive), a list file (.txt) or image shards (.tar)
  class_groups     class-per-folder tree: groups of 2/4/8/16 same-class images concatenated to 16
  videos           video files (PyAV) or frame folders: 16 frames at strides 10/20/30 from random starts
  multiview_mesh   OBJ / URDF meshes rendered around an orbit (radius U[1.5,2.2], elevation U[-45,45])
  multiview_folder folders of views rendered elsewhere (sorted by name = azimuth order)
  pairs            paired folders: {path}/{image_dir}/x.png + {path}/{task}/x.png, 8 pairs of one task
  annotate         annotations the builder draws itself: edges, colorization, inpainting, segmentation
                   (from label maps), depth and normals (from depth maps), boxes and keypoints (from JSON)
  annotated_video  {path}/{frames_dir}/{video}/ + {path}/{task}/{video}/ frame folders, both layouts
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from tokenizer.common.errors import ImageLoadError, InputError
from tokenizer.image_io import IMAGE_EXTENSIONS, list_images, load_image, resize_square

from . import annotations as ann
from .build import DataConfig, Skip, SourceConfig, source_name, unit_rng
from .sequence import MAX_IMAGES, Sequence

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".gif")
MESH_EXTENSIONS = (".obj", ".urdf")


def image_failure(e: ImageLoadError) -> str:
    r = e.reason.lower()
    if "no such file" in r:
        return "image_missing"
    if "truncated" in r or "broken data stream" in r or "image file is truncated" in r:
        return "image_truncated"
    if "mode" in r:
        return "image_bad_mode"
    return "image_corrupt"


def load_square(path, size: int) -> Image.Image:
    try:
        return resize_square(load_image(path), size)
    except ImageLoadError as e:
        raise Skip(image_failure(e), path) from None


def _input_dir(path: str, what: str) -> Path:
    if not path:
        raise InputError(f"{what}: source needs `path`")
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: {what} folder does not exist")
    if not p.is_dir():
        raise InputError(f"{p}: {what} source path is not a folder")
    try:
        next(p.iterdir(), None)
    except OSError as e:
        raise InputError(f"{p}: {what} folder is unreadable ({e.strerror})") from None
    return p


def _images_in(folder: Path, what: str) -> list[Path]:
    found = list_images(folder)
    if not found:
        raise InputError(f"{folder}: no images found for the {what} source")
    return found


def _by_stem(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS + (".npy",)}


class Source:
    def __init__(self, cfg: SourceConfig, data: DataConfig):
        self.cfg, self.data, self.name = cfg, data, source_name(cfg)
        self.size = data.image_size

    def plan(self) -> list:
        raise NotImplementedError

    def make(self, unit, rng: np.random.Generator, seed: int) -> list:
        raise NotImplementedError

    def seq(self, images, kind, **meta) -> Sequence:
        return Sequence(list(images), kind, self.name, meta)


# ---------------------------------------------------------------- built-in renderer

class BuiltinSource(Source):
    DEFAULT_KINDS = {"multiview": 0.3, "video": 0.25, "pairs": 0.2, "tuples": 0.05, "annotated_video": 0.1,
                     "single": 0.05, "class_group": 0.05}

    def __init__(self, cfg, data):
        super().__init__(cfg, data)
        weights = cfg.kinds or self.DEFAULT_KINDS
        bad = set(weights) - set(self.DEFAULT_KINDS)
        if bad:
            raise InputError(f"builtin source: unknown kinds {sorted(bad)}; valid: {sorted(self.DEFAULT_KINDS)}")
        self.kinds = sorted(weights)
        w = np.array([float(weights[k]) for k in self.kinds])
        self.p = w / w.sum()
        from . import render

        self.tasks = list(cfg.tasks or render.TASKS)
        bad = set(self.tasks) - set(render.TASKS)
        if bad:
            raise InputError(f"builtin source: unknown tasks {sorted(bad)}; valid: {list(render.TASKS)}")
        extra = set(cfg.task_weights) - set(self.tasks)
        if extra:
            raise InputError(f"builtin source: task_weights names tasks not in `tasks`: {sorted(extra)}")
        tw = np.array([float(cfg.task_weights.get(t, 1.0)) for t in self.tasks])
        if (tw < 0).any() or tw.sum() <= 0:
            raise InputError(f"builtin source: task_weights must be >= 0 with a positive sum, got {cfg.task_weights}")
        self.task_p = tw / tw.sum()
        if cfg.orbit_direction not in ("forward", "both"):
            raise InputError(f"builtin source: orbit_direction must be forward or both, got {cfg.orbit_direction!r}")

    def plan(self):
        return list(range(self.cfg.count or 1000))

    def _objects(self):
        from . import render

        return render.list_objects(self.cfg.split)

    def make(self, unit, rng, seed):
        from . import render

        kind = self.kinds[int(rng.choice(len(self.kinds), p=self.p))]
        objs = self._objects()
        pick = lambda: objs[int(rng.integers(len(objs)))]  # noqa: E731
        sz, split = self.size, self.cfg.split
        if kind == "multiview":
            step = self.cfg.step_deg
            if self.cfg.orbit_direction == "both" and rng.random() < 0.5:
                step = -step
            o = render.render_orbit(pick(), size=sz, seed=seed, views=self.cfg.views, step_deg=step)
            return [self.seq(o["images"], "multiview", object=o["object"], split=split, azimuths=o["azimuths"],
                             elevation=o["elevation"], radius=o["radius"], step_deg=step)]
        if kind == "video":
            v = render.render_video(seed=seed, size=sz, n_frames=self.cfg.n_frames, split=split)
            return [self.seq(v["images"], "video", split=split, frames=list(range(len(v["images"]))), **v["meta"])]
        if kind == "single":
            v = render.render_object_view(pick(), seed=seed, size=sz)
            return [self.seq([v.rgb], "single", object=v.meta["object"], split=split)]
        if kind == "class_group":  # "class" = object: g random views/scenes of one object per group
            g = int(self.cfg.group_sizes[int(rng.integers(len(self.cfg.group_sizes)))])
            images, groups = [], []
            for _ in range(MAX_IMAGES // g):
                o = pick()
                images += [render.render_object_view(o, seed=int(rng.integers(2**31)), size=sz).rgb for _ in range(g)]
                groups.append({"class": o.name})
            return [self.seq(images, "class_group", group_size=g, groups=groups,
                             classes=[x["class"] for x in groups], split=split)]
        if kind == "pairs":
            task = self.tasks[int(rng.choice(len(self.tasks), p=self.task_p))]
            images, names = [], []
            for j in range(self.cfg.pairs_per_sequence):
                v = render.render_object_view(pick(), seed=int(rng.integers(2**31)), size=sz)
                images += render.task_pair(v, task, rng)
                names.append(v.meta["object"])
            return [self.seq(images, "pairs", task=task, objects=names, split=split, tuple_size=2)]
        if kind == "tuples":
            k = int(rng.integers(1, len(render.ANNOTATIONS) + 1))
            anns = sorted(rng.choice(render.ANNOTATIONS, size=k, replace=False).tolist(),
                          key=render.ANNOTATIONS.index)
            images, names = [], []
            for j in range(MAX_IMAGES // (k + 1)):
                v = render.render_object_view(pick(), seed=int(rng.integers(2**31)), size=sz)
                images += [v.rgb] + [render.annotation_image(v, a) for a in anns]
                names.append(v.meta["object"])
            return [self.seq(images, "tuples", annotations=anns, tuple_size=k + 1, objects=names, split=split)]
        # annotated_video
        n = MAX_IMAGES // 2
        a = render.ANNOTATIONS[int(rng.integers(len(render.ANNOTATIONS)))]
        layout = self.cfg.layouts[int(rng.integers(len(self.cfg.layouts)))]
        v = render.render_video(seed=seed, size=sz, n_frames=n, split=split)
        annots = [render.annotation_image(view, a) for view in v["views"]]
        return [self.seq(_layout(v["images"], annots, layout), "annotated_video", annotation=a, layout=layout,
                         split=split, frames=list(range(n)), **v["meta"])]


def _layout(frames, annots, layout):
    if layout == "interleaved":
        return [im for pair in zip(frames, annots) for im in pair]
    if layout == "grouped":
        return list(frames) + list(annots)
    raise InputError(f"annotated video layout must be 'interleaved' or 'grouped', got {layout!r}")


# ---------------------------------------------------------------- single images

class ImagesSource(Source):
    """One image per sequence from a folder (recursive), a .txt list of paths, or image shards (.tar)."""

    def plan(self):
        p = Path(self.cfg.path)
        if p.is_file() and p.suffix == ".txt":
            lines = [ln.strip() for ln in p.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
            if not lines:
                raise InputError(f"{p}: empty image list")
            return [("file", str((p.parent / ln) if not Path(ln).is_absolute() else ln)) for ln in lines]
        if p.suffix == ".tar" or (p.is_dir() and any(p.glob("*.tar"))):
            from .shards import list_shards

            return [("shard", str(s)) for s in list_shards(p)]
        return [("file", str(x)) for x in _images_in(_input_dir(self.cfg.path, "images"), "images")]

    def make(self, unit, rng, seed):
        how, path = unit
        if how == "file":
            return [self.seq([load_square(path, self.size)], "single", paths=[path])]
        from .shards import iter_tar_samples
        from .sequence import frame_names

        out = []
        try:
            for sample in iter_tar_samples(path):
                names = frame_names(sample) or [k for k in sample if k.split(".")[-1] in
                                                 ("png", "jpg", "jpeg", "webp", "bmp")]
                for nm in names:
                    item = f"{path}:{sample['__key__']}.{nm}"
                    try:
                        import io

                        with Image.open(io.BytesIO(sample[nm])) as im:
                            im.load()
                            from tokenizer.image_io import to_rgb

                            img = resize_square(to_rgb(im), self.size)
                        out.append(self.seq([img], "single", paths=[item]))
                    except (OSError, ValueError, SyntaxError) as e:
                        out.append(Skip("image_truncated" if "truncated" in str(e) else "image_corrupt", item))
        except InputError:
            out.append(Skip("shard_corrupt", path))
        return out


# ---------------------------------------------------------------- same-class groups

class ClassGroupsSource(Source):
    """ImageNet layout root/class/*.jpg -> 16-image sequences made of 16/g groups of g same-class images."""

    def plan(self):
        root = _input_dir(self.cfg.path, "class_groups")
        classes = {}
        for d in sorted(x for x in root.iterdir() if x.is_dir()):
            imgs = list_images(d)
            if imgs:
                classes[d.name] = [str(x) for x in imgs]
        if not classes:
            raise InputError(f"{root}: no class folders with images found")
        for g in self.cfg.group_sizes:
            if g not in (1, 2, 4, 8, 16):
                raise InputError(f"class_groups: group size {g} does not divide 16")
        total = sum(len(v) for v in classes.values())
        n = self.cfg.count or max(1, total // MAX_IMAGES)
        names = sorted(classes)
        units = []
        for i in range(n):
            rng = unit_rng(self.data.seed, self.name, i, stream=1)
            g = int(self.cfg.group_sizes[int(rng.integers(len(self.cfg.group_sizes)))])
            groups = []
            for _ in range(MAX_IMAGES // g):
                c = names[int(rng.integers(len(names)))]
                files = classes[c]
                # g images plus spares that replace unreadable ones (with repeats when a class is small)
                idx = rng.permutation(len(files)).tolist()
                while len(idx) < g + 2:
                    idx += rng.permutation(len(files)).tolist()
                groups.append((c, g, [files[j] for j in idx[: g + 2]]))
            units.append(groups)
        return units

    def make(self, unit, rng, seed):
        images, meta_groups, out = [], [], []
        for cls, g, cands in unit:
            got = []
            for path in cands:
                if len(got) == g:
                    break
                try:
                    got.append((path, load_square(path, self.size)))
                except Skip as e:
                    out.append(e)
            if len(got) < g:
                return out + [Skip("class_group_too_few_readable", cls)]
            images += [im for _, im in got]
            meta_groups.append({"class": cls, "paths": [p for p, _ in got]})
        g = unit[0][1]
        return out + [self.seq(images, "class_group", group_size=g, groups=meta_groups,
                               classes=[m["class"] for m in meta_groups])]


# ---------------------------------------------------------------- videos

def _is_frame_dir(d: Path) -> bool:
    return d.is_dir() and any(x.suffix.lower() in IMAGE_EXTENSIONS for x in d.iterdir())


class VideoReader:
    """Frames of a video file (PyAV) or of a frame folder (sorted image names), by index."""

    def __init__(self, path: str):
        self.path = Path(path)
        self.is_dir = self.path.is_dir()

    def count(self) -> int:
        if self.is_dir:
            return len([x for x in sorted(self.path.iterdir()) if x.suffix.lower() in IMAGE_EXTENSIONS])
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

    def frames(self, indices: list[int], size: int) -> list[Image.Image]:
        want = sorted(set(indices))
        got: dict[int, Image.Image] = {}
        if self.is_dir:
            files = [x for x in sorted(self.path.iterdir()) if x.suffix.lower() in IMAGE_EXTENSIONS]
            for i in want:
                got[i] = load_square(files[i], size)
        else:
            import av

            last = want[-1]
            wanted = set(want)
            try:
                with av.open(str(self.path)) as c:
                    for i, frame in enumerate(c.decode(video=0)):
                        if i in wanted:
                            got[i] = resize_square(frame.to_image().convert("RGB"), size)
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
        root = _input_dir(self.cfg.path, "videos")
        vids = sorted(str(p) for p in root.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())
        vids += sorted(str(d) for d in root.rglob("*") if _is_frame_dir(d))
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


# ---------------------------------------------------------------- multi-view

class MultiviewMeshSource(Source):
    def plan(self):
        root = _input_dir(self.cfg.path, "multiview_mesh")
        meshes = sorted(str(p) for p in root.rglob("*") if p.suffix.lower() in MESH_EXTENSIONS and p.is_file())
        if not meshes:
            raise InputError(f"{root}: no .obj or .urdf meshes found")
        return [(m, k) for m in meshes for k in range(self.cfg.orbits_per_object)]

    def make(self, unit, rng, seed):
        from . import render

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


class MultiviewFolderSource(Source):
    """root/object/*.png rendered elsewhere, names sorted = orbit order; `views` consecutive from a random start."""

    def plan(self):
        root = _input_dir(self.cfg.path, "multiview_folder")
        dirs = sorted(str(d) for d in root.rglob("*") if _is_frame_dir(d))
        if not dirs:
            raise InputError(f"{root}: no folders of view images found")
        return [(d, k) for d in dirs for k in range(self.cfg.orbits_per_object)]

    def make(self, unit, rng, seed):
        d, k = unit
        files = list_images(d)
        if len(files) < 2:
            raise Skip("multiview_too_few_views", d)
        n = min(self.cfg.views, len(files))
        start = int(rng.integers(len(files)))
        idx = [(start + i) % len(files) for i in range(n)]
        images = []
        for i in idx:
            images.append(load_square(files[i], self.size))
        step = 360.0 / len(files)
        return [self.seq(images, "multiview", paths=[str(files[i]) for i in idx], view_indices=idx,
                         azimuths=[i * step for i in idx], orbit_views=len(files), orbit=k)]


# ---------------------------------------------------------------- annotated pairs / tuples

def _chunks(items, n):
    return [items[i:i + n] for i in range(0, len(items), n)]


class PairsSource(Source):
    """{path}/{image_dir}/x.* paired with {path}/{task}/x.* (same stem): 8 pairs of one task per sequence,
    or (tuples: true) each image with all its k annotations as (k+1)-tuples, 16 // (k+1) per sequence."""

    def plan(self):
        root = _input_dir(self.cfg.path, "pairs")
        if not self.cfg.tasks:
            raise InputError("pairs source: list the annotation folders in `tasks`")
        imgs = _by_stem(root / self.cfg.image_dir)
        if not imgs:
            raise InputError(f"{root / self.cfg.image_dir}: no input images found for the pairs source")
        stems = sorted(imgs)
        units = []
        if self.cfg.tuples:
            per = max(1, MAX_IMAGES // (len(self.cfg.tasks) + 1))
            rng = unit_rng(self.data.seed, self.name, 0, stream=1)
            order = [stems[i] for i in rng.permutation(len(stems))]
            return [("tuples", c) for c in _chunks(order, per)]
        for t, task in enumerate(self.cfg.tasks):
            rng = unit_rng(self.data.seed, self.name, t, stream=1)
            order = [stems[i] for i in rng.permutation(len(stems))]
            units += [(task, c) for c in _chunks(order, self.cfg.pairs_per_sequence)]
        return units

    def make(self, unit, rng, seed):
        root = Path(self.cfg.path)
        task, stems = unit
        imgs = _by_stem(root / self.cfg.image_dir)
        tasks = self.cfg.tasks if task == "tuples" else [task]
        anns = {t: _by_stem(root / t) for t in tasks}
        images, used, out = [], [], []
        for s in stems:
            miss = [t for t in tasks if s not in anns[t]]
            if s not in imgs or miss:
                out.append(Skip("pair_missing_side", f"{s} (missing {', '.join(miss) or self.cfg.image_dir})"))
                continue
            try:
                group = [load_square(imgs[s], self.size)] + [load_square(anns[t][s], self.size) for t in tasks]
            except Skip as e:
                out.append(e)
                continue
            images += group
            used.append(s)
        if not used:
            return out
        if task == "tuples":
            return out + [self.seq(images, "tuples", annotations=list(tasks), tuple_size=len(tasks) + 1,
                                   stems=used)]
        return out + [self.seq(images, "pairs", task=task, tuple_size=2, stems=used,
                               paths=[[str(imgs[s]), str(anns[task][s])] for s in used])]


ANNOTATE_TASKS = ("edges", "colorization", "inpainting", "segmentation", "depth", "normals", "boxes", "keypoints")


def _read_array(path: Path) -> np.ndarray:
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False)
    with Image.open(path) as im:
        im.load()
        return np.asarray(im)


class AnnotateSource(Source):
    """Annotations drawn by the builder from images (+ label maps / depth maps / JSON where a task needs them)."""

    def plan(self):
        root = _input_dir(self.cfg.path, "annotate")
        tasks = self.cfg.tasks or ["edges", "colorization", "inpainting"]
        bad = set(tasks) - set(ANNOTATE_TASKS)
        if bad:
            raise InputError(f"annotate source: unknown tasks {sorted(bad)}; valid: {list(ANNOTATE_TASKS)}")
        img_dir = root / self.cfg.image_dir if (root / self.cfg.image_dir).is_dir() else root
        stems = sorted(p.stem for p in (img_dir.iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not stems:
            raise InputError(f"{img_dir}: no images found for the annotate source")
        if self.cfg.tuples:
            per = max(1, MAX_IMAGES // (len(tasks) + 1))
            return [("tuples", c) for c in _chunks(stems, per)]
        units = []
        for t, task in enumerate(tasks):
            rng = unit_rng(self.data.seed, self.name, t, stream=1)
            order = [stems[i] for i in rng.permutation(len(stems))]
            units += [(task, c) for c in _chunks(order, self.cfg.pairs_per_sequence)]
        return units

    def _pair(self, stem: str, task: str, rng) -> tuple[Image.Image, Image.Image]:
        root = Path(self.cfg.path)
        img_dir = root / self.cfg.image_dir if (root / self.cfg.image_dir).is_dir() else root
        img_path = _by_stem(img_dir).get(stem)
        if img_path is None:
            raise Skip("image_missing", stem)
        try:
            img = load_image(img_path)
        except ImageLoadError as e:
            raise Skip(image_failure(e), img_path) from None
        if task == "edges":
            a, b = img, ann.edges_image(img)
        elif task == "colorization":
            a, b = ann.colorization_input(img), img
        elif task == "inpainting":
            img = resize_square(img, self.size)  # boxes drawn at the output size
            return ann.inpainting_input(img, rng)[0], img
        elif task in ("segmentation", "depth", "normals"):
            d = root / (self.cfg.labels_dir if task == "segmentation" else self.cfg.depth_dir)
            side = _by_stem(d).get(stem)
            if side is None:
                raise Skip("pair_missing_side", f"{stem} (no {task} map in {d})")
            try:
                arr = _read_array(side)
            except (OSError, ValueError, SyntaxError):
                raise Skip("annotation_corrupt", side) from None
            if arr.ndim == 3:
                arr = arr[..., 0]
            if arr.shape != (img.size[1], img.size[0]):
                raise Skip("annotation_size_mismatch", side)
            if task == "segmentation":
                b = ann.segmentation_image(arr.astype(np.int64) - 1)  # label 0 = background
            else:
                depth = arr.astype(np.float64)
                mask = depth > 0
                b = (ann.depth_image(depth, mask) if task == "depth" else
                     ann.normals_image(ann.normals_from_depth(np.where(mask, depth, depth[mask].max() if mask.any() else 1),
                                                              self.cfg.fov_deg), mask))
            a = img
        else:  # boxes / keypoints from JSON
            side = root / self.cfg.json_dir / f"{stem}.json"
            if not side.is_file():
                raise Skip("pair_missing_side", f"{stem} (no {side})")
            try:
                data = json.loads(side.read_text())
            except (OSError, json.JSONDecodeError):
                raise Skip("annotation_corrupt", side) from None
            if task == "boxes":
                boxes = data.get("boxes", [])
                b = ann.draw_boxes(img, [bx[:4] for bx in boxes], [bx[4] if len(bx) > 4 else i for i, bx in enumerate(boxes)])
            else:
                b = img
                for person in data.get("keypoints", []):
                    pts = np.asarray(person, np.float64).reshape(-1, 3)
                    b = ann.draw_skeleton(b, pts[:, :2], ann.COCO_SKELETON, visible=pts[:, 2] > 0)
            a = img
        return resize_square(a, self.size), resize_square(b, self.size)

    def make(self, unit, rng, seed):
        task, stems = unit
        tasks = (self.cfg.tasks or ["edges", "colorization", "inpainting"]) if task == "tuples" else [task]
        images, used, out = [], [], []
        for s in stems:
            try:
                pairs = [self._pair(s, t, rng) for t in tasks]
            except Skip as e:
                out.append(e)
                continue
            if task == "tuples":
                images += [pairs[0][0]] + [b for _, b in pairs]  # (image, a1, ..., ak)
            else:
                images += list(pairs[0])
            used.append(s)
        if not used:
            return out
        if task == "tuples":
            return out + [self.seq(images, "tuples", annotations=list(tasks), tuple_size=len(tasks) + 1, stems=used)]
        return out + [self.seq(images, "pairs", task=task, tuple_size=2, stems=used)]


# ---------------------------------------------------------------- annotated videos

class AnnotatedVideoSource(Source):
    """{path}/{frames_dir}/{video}/ + {path}/{task}/{video}/ (matching frame names): 8 frames + 8
    annotations at stride `strides[0]`, laid out interleaved {f1,a1,...} or grouped {f1..f8,a1..a8}."""

    def plan(self):
        root = _input_dir(self.cfg.path, "annotated_video")
        if not self.cfg.tasks:
            raise InputError("annotated_video source: name the annotation folder in `tasks`")
        fdir = root / self.cfg.frames_dir
        vids = sorted(d.name for d in fdir.iterdir() if _is_frame_dir(d)) if fdir.is_dir() else []
        if not vids:
            raise InputError(f"{fdir}: no frame folders found")
        return [(v, t, layout) for v in vids for t in self.cfg.tasks for layout in self.cfg.layouts]

    def make(self, unit, rng, seed):
        vid, task, layout = unit
        root = Path(self.cfg.path)
        frames = _by_stem(root / self.cfg.frames_dir / vid)
        annots = _by_stem(root / task / vid)
        stems = [s for s in sorted(frames) if s in annots]
        out = [Skip("pair_missing_side", f"{vid}/{s} (no {task} frame)") for s in sorted(frames) if s not in annots]
        n, stride = MAX_IMAGES // 2, int(self.cfg.strides[0]) if self.cfg.strides else 1
        if len(stems) < (n - 1) * stride + 1:
            return out + [Skip("video_too_short", f"{vid} ({len(stems)} annotated frames)")]
        start = int(rng.integers(0, len(stems) - (n - 1) * stride))
        idx = [start + i * stride for i in range(n)]
        try:
            f = [load_square(frames[stems[i]], self.size) for i in idx]
            a = [load_square(annots[stems[i]], self.size) for i in idx]
        except Skip as e:
            return out + [e]
        return out + [self.seq(_layout(f, a, layout), "annotated_video", annotation=task, layout=layout,
                               frames=idx, stride=stride, video=vid)]


SOURCES = {"builtin": BuiltinSource, "images": ImagesSource, "class_groups": ClassGroupsSource,
           "videos": VideosSource, "multiview_mesh": MultiviewMeshSource, "multiview_folder": MultiviewFolderSource,
           "pairs": PairsSource, "annotate": AnnotateSource, "annotated_video": AnnotatedVideoSource}


def make_source(cfg: SourceConfig, data: DataConfig) -> Source:
    if cfg.type not in SOURCES:
        raise InputError(f"unknown source type {cfg.type!r}; valid: {', '.join(SOURCES)}")
    return SOURCES[cfg.type](cfg, data)
