"""The coco source: a tiny COCO dataset (instances + person_keypoints JSON) built through the real build path.

Images are 64x48 and the output 48x48, so the resize is a pure 8-px crop and drawn pixels can be checked
exactly at the coordinates the JSON gives (x_out = x - 8).
"""

import json

import numpy as np
import pytest
from PIL import Image

from data_builders import annotations as ann
from data_builders.build import build, plan_shards
from data_builders.config import DataConfig, SourceConfig
from data_builders.sequence import sample_images, sample_meta
from data_builders.stats import collect_stats
from lvm_base.errors import InputError
from lvm_base.image_io import resize_square
from lvm_base.tar import iter_tar_samples, list_shards

W, H, SIZE, CROP = 64, 48, 48, 8
PERSON, DOG = 1, 18  # listed unsorted below: colours follow the sorted ids (person 0, dog 1)
COLOR = {PERSON: tuple(ann.PALETTE[1]), DOG: tuple(ann.PALETTE[2])}
BLACK = (0, 0, 0)
# COCO-17 keypoints of the one person (x, y, v); l_wrist (9) and l_ankle (15) are not labelled (v = 0).
KEYPOINTS = [(32, 8, 2), (34, 6, 2), (30, 6, 2), (36, 7, 1), (28, 7, 2), (42, 15, 2), (22, 15, 2), (46, 26, 2),
             (18, 26, 2), (50, 40, 0), (14, 36, 2), (38, 30, 2), (26, 30, 2), (38, 38, 1), (26, 38, 2),
             (38, 46, 0), (26, 46, 2)]


def crowd_rle():
    from pycocotools import mask as mask_utils

    m = np.zeros((H, W), np.uint8)
    m[38:46, 10:51] = 1
    rle = mask_utils.encode(np.asfortranarray(m))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}  # bytes are not JSON


def rect(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def instances_json():
    images = [{"id": i, "file_name": f"{i:06d}.png", "width": W, "height": H} for i in (1, 2, 3, 4)]
    images.append({"id": 5, "file_name": "missing.png", "width": W, "height": H})
    anns = [
        {"id": 101, "image_id": 1, "category_id": DOG, "bbox": [12, 10, 20, 15], "area": 300, "iscrowd": 0,
         "segmentation": rect(12, 10, 31, 24)},
        {"id": 102, "image_id": 1, "category_id": PERSON, "bbox": [36, 20, 14, 20], "area": 130, "iscrowd": 0,
         "segmentation": [[36, 20, 49, 20, 42, 39]]},
        {"id": 201, "image_id": 2, "category_id": DOG, "bbox": [20, 5, 24, 30], "area": 690, "iscrowd": 0,
         "segmentation": rect(20, 5, 43, 34)},
        {"id": 202, "image_id": 2, "category_id": PERSON, "bbox": [10, 38, 41, 8], "area": 328, "iscrowd": 1,
         "segmentation": crowd_rle()},
        {"id": 301, "image_id": 3, "category_id": PERSON, "bbox": [14, 6, 36, 40], "area": 900, "iscrowd": 0,
         "segmentation": rect(18, 6, 46, 46)},
        {"id": 501, "image_id": 5, "category_id": DOG, "bbox": [1, 1, 9, 9], "area": 81, "iscrowd": 0,
         "segmentation": rect(1, 1, 9, 9)},
    ]
    cats = [{"id": DOG, "name": "dog"}, {"id": PERSON, "name": "person"}]
    return {"images": images, "annotations": anns, "categories": cats}


def keypoints_json():
    person = {"id": 301, "image_id": 3, "category_id": PERSON, "bbox": [14, 6, 36, 40], "area": 900, "iscrowd": 0,
              "num_keypoints": 15, "keypoints": [float(v) for p in KEYPOINTS for v in p]}
    return {"images": instances_json()["images"][:4], "annotations": [person],
            "categories": [{"id": PERSON, "name": "person", "skeleton": [list(e) for e in ann.COCO_SKELETON]}]}


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    (root / "train2017").mkdir()
    (root / "annotations").mkdir()
    for i in (1, 2, 3, 4):
        arr = np.full((H, W, 3), 90, np.uint8)
        arr[4 + i:20 + i, 30:50] = (200, 120, 40)
        Image.fromarray(arr).save(root / "train2017" / f"{i:06d}.png")
    (root / "annotations" / "instances_train2017.json").write_text(json.dumps(instances_json()))
    (root / "annotations" / "person_keypoints_train2017.json").write_text(json.dumps(keypoints_json()))
    return root


def build_coco(tmp_path, root, name="out", **kw):
    cfg = DataConfig(out=str(tmp_path / name), image_size=SIZE, shard_size=8,
                     sources=[SourceConfig(type="coco", path=str(root), image_dir="train2017", **kw)])
    build(cfg, progress=False, log=lambda *a: None)
    return [s for shard in list_shards(cfg.out) for s in iter_tar_samples(shard)], cfg


def by_task(samples):
    """task -> {file name: (image, annotation)} as uint8 arrays."""
    out = {}
    for s in samples:
        meta, ims = sample_meta(s), [np.asarray(im) for im in sample_images(s)]
        assert meta["kind"] == "pairs" and len(ims) == 2 * len(meta["stems"])
        out[meta["task"]] = {f: (ims[2 * k], ims[2 * k + 1]) for k, f in enumerate(meta["stems"])}
    return out


@pytest.fixture(scope="module")
def built(coco_root, tmp_path_factory):
    samples, cfg = build_coco(tmp_path_factory.mktemp("b"), coco_root)
    return by_task(samples), cfg


def px(img, x, y):
    """The output pixel of original coordinates (x, y)."""
    return tuple(int(c) for c in img[y, x - CROP])


def ann_mask(root, ann_id):
    from pycocotools.coco import COCO

    coco = COCO(str(root / "annotations" / "instances_train2017.json"))
    m = Image.fromarray(coco.annToMask(coco.anns[ann_id]) * 255)
    return np.asarray(resize_square(m, SIZE)) > 127


def test_default_tasks_json_names_and_skips(built):
    tasks, cfg = built
    assert sorted(tasks) == ["boxes", "instance_masks", "pose", "semantic_masks"]
    # image 4 has no annotations and is not planned; only image 3 has a person with keypoints
    assert sorted(tasks["boxes"]) == ["000001.png", "000002.png", "000003.png"]
    assert list(tasks["pose"]) == ["000003.png"]
    st = collect_stats(cfg.out)
    assert st["failures"] == {"image_missing": 3}  # missing.png, once per instance task
    im, _ = tasks["boxes"]["000001.png"]
    assert im.shape == (SIZE, SIZE, 3) and px(im, 40, 10) == (200, 120, 40)


def test_boxes_drawn_at_xywh_in_category_colours(built):
    boxes = built[0]["boxes"]
    _, b1 = boxes["000001.png"]
    # dog [12, 10, 20, 15]: outline columns x = 12 and x + w - 1 = 31, rows 10 and 24; nothing at x + w
    for x, y in [(12, 17), (31, 17), (20, 10), (20, 24)]:
        assert px(b1, x, y) == COLOR[DOG], (x, y)
    for x, y in [(32, 17), (20, 25), (20, 9), (13, 17)]:
        assert px(b1, x, y) != COLOR[DOG], (x, y)
    assert px(b1, 36, 30) == px(b1, 49, 30) == COLOR[PERSON]
    _, b2 = boxes["000002.png"]
    assert px(b2, 20, 20) == px(b2, 43, 20) == COLOR[DOG]  # the same category, the same colour
    assert px(b2, 10, 42) != COLOR[PERSON]  # crowd regions get no box
    assert px(boxes["000003.png"][1], 14, 20) == COLOR[PERSON]


def test_instance_masks_match_ann_to_mask(built, coco_root):
    inst = built[0]["instance_masks"]
    a = inst["000001.png"][1]
    m_dog, m_person = ann_mask(coco_root, 101), ann_mask(coco_root, 102)
    c_dog, c_person = np.unique(a[m_dog], axis=0), np.unique(a[m_person], axis=0)
    assert len(c_dog) == len(c_person) == 1  # each instance one flat colour ...
    assert tuple(c_dog[0]) != tuple(c_person[0]) and BLACK not in (tuple(c_dog[0]), tuple(c_person[0]))
    assert (a[~(m_dog | m_person)] == 0).all()  # ... over black
    a2 = inst["000002.png"][1]
    assert (a2[ann_mask(coco_root, 201)] != 0).any(axis=-1).all()
    assert (a2[ann_mask(coco_root, 202)] == 0).all()  # crowd RLE is not an instance


def test_semantic_masks_use_category_colours_and_crowd_rle(built, coco_root):
    sem = built[0]["semantic_masks"]
    a1, a2 = sem["000001.png"][1], sem["000002.png"][1]
    for a, ids in [(a1, {101: DOG, 102: PERSON}), (a2, {201: DOG, 202: PERSON})]:
        union = np.zeros((SIZE, SIZE), bool)
        for ann_id, cat in ids.items():
            m = ann_mask(coco_root, ann_id)
            assert m.sum() > 10 and (a[m] == COLOR[cat]).all(), ann_id
            union |= m
        assert (a[~union] == 0).all()


def test_pose_openpose18_neck_and_invisible_points(built):
    pose = built[0]["pose"]["000003.png"][1]
    pts, vis = ann.openpose_keypoints([v for p in KEYPOINTS for v in p])
    assert tuple(pts[1]) == (32, 15) and vis[1]  # neck: midpoint of the shoulders (42, 15), (22, 15)
    assert px(pose, 32, 15) == ann.OPENPOSE_COLORS[1]
    assert px(pose, 22, 15) == ann.OPENPOSE_COLORS[2] and px(pose, 42, 15) == ann.OPENPOSE_COLORS[5]
    assert px(pose, 32, 8) == ann.OPENPOSE_COLORS[0]  # nose
    assert px(pose, 32, 11) == ann.OPENPOSE_COLORS[12]  # the neck-nose limb
    assert not vis[7] and not vis[13]  # l_wrist, l_ankle (v = 0)
    for x, y in [(50, 40), (48, 34), (38, 44)]:  # l_wrist, the l_elbow-l_wrist and l_knee-l_ankle limbs
        assert px(pose, x, y) == BLACK, (x, y)
    one = list(KEYPOINTS)
    one[6] = (22, 15, 0)
    assert not ann.openpose_keypoints([v for p in one for v in p])[1][1]  # no neck without both shoulders


def test_openpose_colours_are_the_known_list():
    assert ann.OPENPOSE_COLORS[:4] == ((255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0))
    assert ann.OPENPOSE_COLORS[12] == (0, 0, 255) and ann.OPENPOSE_COLORS[-1] == (255, 0, 85)
    assert len(ann.OPENPOSE_LIMBS) == 17 and len(ann.COCO_TO_OPENPOSE) == 18


def test_pose_coco17_differs(built, coco_root, tmp_path):
    samples, _ = build_coco(tmp_path, coco_root, tasks=["pose"], pose_layout="coco17")
    coco17, op18 = by_task(samples)["pose"]["000003.png"][1], built[0]["pose"]["000003.png"][1]
    assert not np.array_equal(coco17, op18)
    assert not (coco17 == ann.OPENPOSE_COLORS[1]).all(axis=-1).any()  # no neck joint
    assert px(coco17, 50, 40) == BLACK


def test_tuples(coco_root, tmp_path):
    samples, cfg = build_coco(tmp_path, coco_root, tasks=["boxes", "semantic_masks"], tuples=True)
    (s,) = samples
    meta = sample_meta(s)
    assert meta["kind"] == "tuples" and meta["annotations"] == ["boxes", "semantic_masks"]
    assert sorted(meta["stems"]) == ["000001.png", "000002.png", "000003.png"]
    ims = [np.asarray(im) for im in sample_images(s)]
    k = meta["stems"].index("000001.png")
    assert px(ims[3 * k + 1], 12, 17) == COLOR[DOG] and px(ims[3 * k + 2], 20, 17) == COLOR[DOG]
    assert collect_stats(cfg.out)["failures"] == {"image_missing": 1}


def test_tuple_subsets(coco_root, tmp_path):
    tasks = ["boxes", "instance_masks", "semantic_masks"]
    samples, _ = build_coco(tmp_path, coco_root, tasks=tasks, tuples=True, tuple_subsets=True)
    (s,) = samples
    meta, ims = sample_meta(s), sample_images(s)
    assert sum(meta["tuple_sizes"]) == len(ims) and len(meta["tuple_annotations"]) == len(meta["stems"]) == 3
    assert all(set(p) <= set(tasks) for p in meta["tuple_annotations"])
    starts = np.cumsum([0] + meta["tuple_sizes"][:-1])
    assert all(px(np.asarray(ims[i]), 40, 10) == (200, 120, 40) for i in starts)  # each tuple opens with the photo


@pytest.mark.parametrize("text, words", [("{not json", "JSONDecodeError"), ("[1, 2]", "not a COCO"),
                                         ('{"images": [{"id": 1}], "annotations": []}', "file_name")])
def test_bad_json_is_one_line_error(tmp_path, coco_root, text, words):
    (tmp_path / "bad.json").write_text(text)
    cfg = DataConfig(out=str(tmp_path / "o"), sources=[SourceConfig(
        type="coco", path=str(coco_root), image_dir="train2017", instances_json=str(tmp_path / "bad.json"))])
    with pytest.raises(InputError) as e:
        plan_shards(cfg)
    msg = str(e.value)
    assert "\n" not in msg and "bad.json" in msg and words in msg


@pytest.mark.parametrize("kw, words", [({"tasks": ["pose"], "keypoints_json": "nope.json"}, "nope.json"),
                                       ({"tasks": ["depth"]}, "unknown tasks"),
                                       ({"pose_layout": "body25"}, "pose_layout"),
                                       ({"image_dir": "val2017"}, "instances_val2017")])
def test_config_errors(tmp_path, coco_root, kw, words):
    kw = {"image_dir": "train2017", **kw}
    cfg = DataConfig(out=str(tmp_path / "o"), sources=[SourceConfig(type="coco", path=str(coco_root), **kw)])
    with pytest.raises(InputError, match=words):
        plan_shards(cfg)
