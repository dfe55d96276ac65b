"""Every real-dataset preset in configs/data/ builds from a tiny copy of that dataset's layout written here
(file names and folders as the datasets ship them), so a preset that names a folder or key wrongly fails."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_builders.build import build
from data_builders.config import DataConfig
from data_builders.sequence import sample_meta
from data_builders.stats import collect_stats
from lvm_base.config import load_config
from lvm_base.tar import iter_tar_samples, list_shards

ROOT = Path(__file__).resolve().parents[1]


def picture(seed: int, size=(48, 40)) -> Image.Image:
    """A small image with a few coloured rectangles (distinct per seed)."""
    rng = np.random.default_rng(seed)
    a = np.full((size[1], size[0], 3), rng.integers(40, 200, 3), np.uint8)
    for _ in range(3):
        x, y = rng.integers(0, size[0] - 12), rng.integers(0, size[1] - 12)
        a[y:y + 12, x:x + 12] = rng.integers(0, 256, 3)
    return Image.fromarray(a)


def save(img, path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def kinetics(root):
    from test_video_sources import write_clip

    for cls, vid in (("abseiling", "0347ZoDXyP0_000095_000105"), ("zumba", "_8vCkRmWobE_000012_000022")):
        (root / "train" / cls).mkdir(parents=True)
        write_clip(root / "train" / cls / f"{vid}.mp4")  # 10 s at 30 fps
    return root / "train", {"video": 6}  # 2 clips x strides 10, 20, 30


def imagenet(root):
    for c, wnid in enumerate(("n01440764", "n01443537")):
        for i in range(16):
            save(picture(100 * c + i), root / "train" / wnid / f"{wnid}_{i + 1}.JPEG")
    return root / "train", {"class_group": None, "single": 32}


def laion(root):
    from test_input_tars import write_tar

    root.mkdir(parents=True)
    for k in range(2):
        write_tar(root / f"{k:05d}.tar", 5, prefix=f"{k:04d}")
    return f"{root}/{{00000..00001}}.tar", {"single": 10}


def coco(root):
    from test_coco import instances_json, keypoints_json

    for i in (1, 2, 3, 4):
        save(picture(i, (64, 48)), root / "train2017" / f"{i:06d}.png")
    save(picture(5, (64, 48)), root / "train2017" / "missing.png")
    (root / "annotations").mkdir()
    (root / "annotations" / "instances_train2017.json").write_text(json.dumps(instances_json()))
    (root / "annotations" / "person_keypoints_train2017.json").write_text(json.dumps(keypoints_json()))
    return root, {"pairs": 4}


def ade20k(root):
    for i in range(1, 5):
        stem = f"ADE_train_{i:08d}"
        save(picture(i).convert("RGB"), root / "images" / "training" / f"{stem}.jpg")
        lab = np.zeros((40, 48), np.uint8)
        lab[5:20, 5:30], lab[22:38, 10:44] = i, 150
        save(Image.fromarray(lab), root / "annotations" / "training" / f"{stem}.png")
    return root, {"pairs": 1}


def objaverse(root):
    from test_meshes import write_textured_glb, write_vertex_color_glb

    (root / "glbs" / "000-023").mkdir(parents=True)
    write_textured_glb(root / "glbs" / "000-023" / "8476c4170df24cf5bbe6967222d1a42d.glb")
    write_vertex_color_glb(root / "glbs" / "000-023" / "f0c3b9a0e0a14d7d8c6a0c4cf4e5e5a1.glb")
    return root / "glbs", {"multiview": 4}  # 2 meshes x 2 orbits


def rain100h(root):
    for i in range(1, 5):
        clean = picture(i)
        rain = np.asarray(clean).copy()
        rain[::3, ::2] = 255  # streaks
        save(Image.fromarray(rain), root / "train" / "rain" / f"rain-{i:03d}.png")
        save(clean, root / "train" / "norain" / f"norain-{i:03d}.png")
    return root / "train", {"pairs": 1}


def sidd(root):
    for s, scene in enumerate(("0001_001_S6_00100_00060_3200_L", "0002_001_S6_00100_00020_3200_N")):
        for i in (10, 11):
            gt = picture(10 * s + i)
            noisy = np.clip(np.asarray(gt).astype(int) + np.random.default_rng(i).integers(-40, 40, (40, 48, 3)), 0, 255)
            save(Image.fromarray(noisy.astype(np.uint8)), root / "Data" / scene / f"NOISY_SRGB_{i:03d}.PNG")
            save(gt, root / "Data" / scene / f"GT_SRGB_{i:03d}.PNG")
    return root, {"pairs": 1}


def annotated_video(root):
    from test_video_sources import annotated_root

    return annotated_root(root), {"annotated_video": 6}  # 3 strides x 2 layouts


PRESETS = {"kinetics": kinetics, "imagenet": imagenet, "laion": laion, "coco": coco, "ade20k": ade20k,
           "objaverse": objaverse, "rain100h": rain100h, "sidd": sidd, "annotated_video": annotated_video}


def build_preset(name: str, tmp: Path, image_size: int = 32) -> tuple[DataConfig, list]:
    """configs/data/{name}.yaml with every source's `path` pointed at a tiny copy of its layout under `tmp`."""
    path, kinds = PRESETS[name](tmp / "data")
    cfg = load_config(DataConfig, ROOT / "configs" / "data" / f"{name}.yaml", [f"out={tmp / 'out'}",
                                                                               f"image_size={image_size}"])
    for s in cfg.sources:
        s.path = str(path)
    build(cfg, progress=False, log=lambda *a: None)
    return cfg, kinds


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_builds_from_its_datasets_layout(name, tmp_path):
    cfg, kinds = build_preset(name, tmp_path)
    samples = [s for sh in list_shards(cfg.out) for s in iter_tar_samples(sh)]
    got = {}
    for s in samples:
        k = sample_meta(s)["kind"]
        got[k] = got.get(k, 0) + 1
    assert set(got) == set(kinds), got
    for k, n in kinds.items():
        assert n is None or got[k] == n, (k, got)
    failures = collect_stats(cfg.out)["failures"]
    assert failures == {}, failures
