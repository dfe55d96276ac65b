"""The data config and the per-unit types every part of stage 1 shares (build, sources, encode).

`DataConfig` (the YAML of `lvm data build`, e.g. `configs/data/demo.yaml`) lists `SourceConfig`s; each unit
of work gets its RNG from `unit_rng` (dataset seed, source name, unit index: never the process); a bad
input item is raised or returned as `Skip`; `dist_env` reads rank and world size from the launcher.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass, field

import numpy as np

from lvm_base.errors import InputError
from lvm_base.validate import (FINITE, NON_NEGATIVE, POSITIVE, SEED, at_least, between, checks, each,
                                       optional)

WEIGHTS = each(at_least(0.0))  # kind / task -> sampling weight


# Ranges (lvm_base.validate); what one type needs beyond them its builder checks.
@dataclass
@checks(count=NON_NEGATIVE, n_frames=POSITIVE, strides=each(POSITIVE), group_sizes=each(POSITIVE), views=POSITIVE,
        orbit_views=POSITIVE, step_deg=FINITE, orbits_per_object=POSITIVE, kinds=WEIGHTS, task_weights=WEIGHTS,
        pairs_per_sequence=POSITIVE, fov_deg=between(0.0, 180.0, open_lo=True, open_hi=True),
        ignore_color=optional(each(between(0, 255))))
class SourceConfig:
    """One source of visual sequences. `type` picks the builder; unused keys are ignored by that type."""

    # builtin | images | class_groups | videos | multiview_mesh | multiview_folder | pairs | annotate |
    # annotated_video | coco
    type: str = "builtin"
    name: str = ""  # shard/key prefix; defaults to the type
    path: str = ""  # folder, list file, or shard spec of local inputs
    count: int = 0  # number of sequences (builtin); 0 = one pass over the inputs
    split: str = "train"  # builtin objects: train | heldout | all
    kinds: dict = field(default_factory=dict)  # builtin: kind -> weight
    n_frames: int = 16  # video frames per sequence
    strides: list = field(default_factory=lambda: [10, 20, 30])  # video strides (frames)
    # video too short for a stride: clamp (the largest stride that fits, as the release) | skip (count it) |
    # pad (repeat the last frame)
    short_video: str = "clamp"
    group_sizes: list = field(default_factory=lambda: [2, 4, 8, 16])  # class_groups
    views: int = 16  # multi-view: views per sequence (consecutive views of the orbit)
    orbit_views: int = 24  # multi-view: views in the full orbit (360 / step)
    step_deg: float = 15.0
    # builtin orbits: forward (azimuth grows) | both (each sequence's direction at random, so that a model
    # has to read the rotation from the frames it is shown rather than assume it)
    orbit_direction: str = "forward"
    orbits_per_object: int = 1
    up: str = "z"  # multiview_mesh: up axis of the OBJ files (y = rotate upright)
    tasks: list = field(default_factory=list)  # pairs / annotate / builtin tasks
    task_weights: dict = field(default_factory=dict)  # builtin pairs: task -> weight (unlisted tasks: 1)
    pairs_per_sequence: int = 8
    tuples: bool = False  # k annotations of one image as (image, a1..ak) m-tuples instead of pairs
    image_dir: str = "images"  # pairs: folder of inputs; annotation folders are named by `tasks`
    labels_dir: str = "labels"  # annotate: integer label maps (segmentation)
    depth_dir: str = "depth"  # annotate: depth maps (16-bit PNG / .npy) for depth and normals
    json_dir: str = "annotations"  # annotate: {"boxes": [[x0,y0,x1,y1,label]], "keypoints": [[[x,y,v]...]]}
    fov_deg: float = 60.0  # annotate: camera FOV used to turn depth into normals
    frames_dir: str = "frames"  # annotated_video: {frames_dir}/{video}.mp4 or frame folders {frames_dir}/{video}/
    layouts: list = field(default_factory=lambda: ["interleaved", "grouped"])  # annotated videos

    # label maps (annotate segmentation, COCO-Stuff-style maps): class = stored value + label_offset; a
    # negative class is background; `ignore_index` pixels are drawn in `ignore_color` (None = background).
    # `label_preset` (ade20k | coco_stuff | cityscapes | voc) sets the three for that dataset.
    label_preset: str = ""
    label_offset: int = -1  # -1: value 0 is background (ADE20K); 0: values are class ids from 0
    ignore_index: int | None = None  # e.g. 255
    ignore_color: list | None = None  # RGB of ignored pixels

    # pairs / annotate: how a file's name gives its stem, per folder (image_dir or task name) a template such
    # as "rain-{stem}", or one regex with a named group `stem` for every folder
    stem_templates: dict = field(default_factory=dict)
    stem_regex: str = ""
    # pairs: task -> its folder under `path` (default: the task's name); may be `image_dir` itself when both
    # sides share folders and differ by name only (SIDD: NOISY_SRGB_010.PNG beside GT_SRGB_010.PNG)
    task_dirs: dict = field(default_factory=dict)
    # tuples: each sequence holds random m-subsets (m <= k + 1 images) of an image and its k annotations
    tuple_subsets: bool = False

    # coco: instances / person_keypoints JSON (relative to `path`) and the images folder
    instances_json: str = ""
    keypoints_json: str = ""
    pose_layout: str = "openpose18"  # openpose18 (the paper's renders: neck from the shoulders) | coco17

    # multiview_mesh: keep textures and vertex colours of GLB / glTF / OBJ meshes
    textured: bool = True

    # annotated_video: task -> rgb (ready-made frames) | labels (label maps) | boxes | keypoints (JSON in
    # json_dir); unlisted tasks: boxes / keypoints by name, else rgb
    annotation_formats: dict = field(default_factory=dict)


@dataclass
# image_size: the largest a renderer or tokenizer here is asked for is 1024; 8192 px squares are already
# 200 MB per image as raw pixels.
@checks(seed=SEED, image_size=between(8, 8192), shard_size=POSITIVE, limit=NON_NEGATIVE)
class DataConfig:
    out: str = "data/out"
    seed: int = 0
    image_size: int = 256
    image_format: str = "png"  # png | jpg
    # units per shard = sequences per shard: a unit makes at most one sequence, or none when its inputs are
    # skipped (counted in the shard's stats), so such a shard holds fewer
    shard_size: int = 64
    limit: int = 0  # at most this many units per source (0 = all): quick runs and benchmarks
    sources: list[SourceConfig] = field(default_factory=list)

    def __post_init__(self):
        if self.image_format not in ("png", "jpg", "jpeg"):
            raise InputError(f"image_format must be png or jpg, got {self.image_format!r}")
        names = [source_name(s) for s in self.sources]
        if len(set(names)) != len(names):
            raise InputError(f"source names must be unique, got {names} (set `name:` on each source)")


def source_name(s: SourceConfig) -> str:
    name = s.name or s.type
    if not name.replace("_", "").replace("-", "").isalnum():
        raise InputError(f"source name {name!r} may only contain letters, digits, '_' and '-'")
    return name


def unit_rng(seed: int, name: str, index: int, stream: int = 0) -> np.random.Generator:
    """The RNG of one unit: depends on the dataset seed, the source and the unit only (not the process)."""
    return np.random.default_rng([seed, zlib.crc32(name.encode()), index, stream])


def unit_seed(seed: int, name: str, index: int) -> int:
    return int(unit_rng(seed, name, index, stream=7).integers(2**31))


class Skip(Exception):
    """A bad input item: skipped and counted under `reason` (short, snake_case)."""

    def __init__(self, reason: str, item: str = ""):
        super().__init__(f"{reason}: {item}")
        self.reason, self.item = reason, str(item)


def dist_env() -> tuple[int, int]:
    """(rank, world size) from torchrun / accelerate / SLURM environment variables, else (0, 1)."""
    from lvm_base.hardware import env_int

    for r, w in (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS")):
        if r in os.environ and w in os.environ:
            return env_int(r, 0), env_int(w, 1, lo=1)
    return 0, 1
