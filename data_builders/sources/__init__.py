"""Sources of visual sequences: the built-in renderer and local files, one module per type.

Types (config `sources[i].type`; every source follows the `Source` contract in `base.py`):
  builtin          pybullet scenes: multiview orbits, physics videos, task pairs, tuples, annotated videos
  images           single images from a folder (recursive), a list file (.txt) or image shards (.tar, read
                   member by member: img2dataset output of any size)
  class_groups     class-per-folder tree: groups of 2/4/8/16 same-class images concatenated to 16
  videos           video files (PyAV, seeking) or frame folders, or a .txt list of them: 16 frames at every
                   stride of 10/20/30 from random starts (short clips clamp the stride)
  multiview_mesh   GLB / glTF / OBJ (textures kept, trimesh) / URDF meshes rendered around an orbit
                   (radius U[1.5,2.2], one elevation U[-45,45], 16 of 24 views at 15 deg)
  multiview_folder folders of views rendered elsewhere (sorted by name = azimuth order)
  pairs            paired folders: {path}/{image_dir}/x.png + {path}/{task}/x.png, 8 pairs of one task
                   (names may differ: stem_templates / stem_regex; task_dirs for a shared folder)
  annotate         annotations the builder draws itself: edges, colorization, inpainting, segmentation
                   (from label maps), depth and normals (from depth maps), boxes and keypoints (from JSON)
  annotated_video  {frames_dir}/{video}.mp4 or frame folder + per-frame label maps, RGB annotation frames
                   or JSON boxes / keypoints, every stride, both layouts
  coco             COCO instances / person_keypoints JSON drawn as boxes, instance and semantic masks, pose
"""

from __future__ import annotations

from lvm_base.errors import InputError

from ..config import DataConfig, SourceConfig
from .annotate import AnnotateSource
from .annotated_video import AnnotatedVideoSource
from .base import Source
from .builtin import BuiltinSource
from .class_groups import ClassGroupsSource
from .coco import CocoSource
from .images import ImagesSource
from .multiview_folder import MultiviewFolderSource
from .multiview_mesh import MultiviewMeshSource
from .pairs import PairsSource
from .videos import VideosSource

SOURCES = {"builtin": BuiltinSource, "images": ImagesSource, "class_groups": ClassGroupsSource,
           "videos": VideosSource, "multiview_mesh": MultiviewMeshSource, "multiview_folder": MultiviewFolderSource,
           "pairs": PairsSource, "annotate": AnnotateSource, "annotated_video": AnnotatedVideoSource,
           "coco": CocoSource}


def make_source(cfg: SourceConfig, data: DataConfig) -> Source:
    if cfg.type not in SOURCES:
        raise InputError(f"unknown source type {cfg.type!r}; valid: {', '.join(SOURCES)}")
    return SOURCES[cfg.type](cfg, data)
