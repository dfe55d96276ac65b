"""Data builders at the real datasets' size and naming: one walk per folder at plan time (recursive trees,
ImageNet-style), no folder listing in make(), label-map presets, partner files whose names differ
(templates / regex) with the unmatched-files warning, and random m-subsets of an image's k annotations."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_builders.annotations import PALETTE
from data_builders.config import DataConfig, SourceConfig
from data_builders.sequence import sample_images, sample_meta
from data_builders.sources import make_source
from data_builders.stats import collect_stats
from test_data_builders import SIZE, metas, run_build, solid
from lvm_base.errors import InputError


def save(img, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def mirrored_tree(root, classes=("n01440764", "n01443537"), per=3):
    """images/{class}/{class}_{i}.JPEG with label maps labels/{class}/{class}_{i}.png (value = i + 1)."""
    for c in classes:
        for i in range(per):
            save(solid(40 * i + 10, SIZE), root / "images" / c / f"{c}_{i}.JPEG")
            save(Image.fromarray(np.full((SIZE, SIZE), i + 1, np.uint8)), root / "labels" / c / f"{c}_{i}.png")


def test_annotate_recursive_mirrored_tree(tmp_path):
    mirrored_tree(tmp_path / "a")
    _, samples, cfg = run_build(tmp_path, [SourceConfig(type="annotate", path=str(tmp_path / "a"),
                                                        tasks=["segmentation"])])
    stems = sorted(s for m in metas(samples) for s in m["stems"])
    assert stems == sorted(f"{c}/{c}_{i}" for c in ("n01440764", "n01443537") for i in range(3))
    assert collect_stats(cfg.out)["failures"] == {}
    for s, m in zip(samples, metas(samples)):
        ims = sample_images(s)
        for j, stem in enumerate(m["stems"]):  # each image with its own map: value i + 1 = class i -> PALETTE[i + 1]
            i = int(stem[-1])
            assert tuple(np.asarray(ims[2 * j + 1])[0, 0]) == tuple(PALETTE[i + 1])


def test_class_groups_recursive(tmp_path):
    for c, v in (("cat", 10), ("dog", 200)):
        for i in range(4):
            save(solid(v, SIZE), tmp_path / "cls" / c / f"part{i % 2}" / f"{i}.png")
    save(solid(99, SIZE), tmp_path / "cls" / "stray.png")  # no class: left out
    _, samples, _ = run_build(tmp_path, [SourceConfig(type="class_groups", path=str(tmp_path / "cls"), count=4)])
    for s, m in zip(samples, metas(samples)):
        g = m["group_size"]
        for j, grp in enumerate(m["groups"]):
            assert all(Path(p).parts[-3] == grp["class"] for p in grp["paths"])
            want = {"cat": 10, "dog": 200}[grp["class"]]
            assert all(abs(np.asarray(im).mean() - want) < 1 for im in sample_images(s)[j * g:(j + 1) * g])


def label_build(tmp_path, name, **kw):
    """One 32x32 label map with values 0, 1, 5, 255 in its four quadrants; the drawn segmentation."""
    root = tmp_path / "lab"
    if not root.exists():
        save(solid(128, SIZE), root / "images" / "x.png")
        lab = np.zeros((SIZE, SIZE), np.uint8)
        lab[:16, 16:], lab[16:, :16], lab[16:, 16:] = 1, 5, 255
        save(Image.fromarray(lab), root / "labels" / "x.png")
    _, samples, _ = run_build(tmp_path, [SourceConfig(type="annotate", path=str(root), tasks=["segmentation"], **kw)],
                              name=name)
    seg = np.asarray(sample_images(samples[0])[1])
    return [tuple(seg[y, x]) for y, x in ((0, 0), (0, 31), (31, 0), (31, 31))]


def test_label_presets_and_ignore(tmp_path):
    black, pal = (0, 0, 0), [tuple(c) for c in PALETTE]
    # class id L is drawn PALETTE[L + 1]; coco_stuff: values are ids from 0, 255 ignored
    assert label_build(tmp_path, "coco", label_preset="coco_stuff") == [pal[1], pal[2], pal[6], black]
    assert label_build(tmp_path, "voc", label_preset="voc") == [black, pal[1], pal[5], black]
    magenta = (255, 0, 255)
    assert label_build(tmp_path, "voc_ign", label_preset="voc", ignore_color=list(magenta))[3] == magenta
    # defaults (as before): value 0 is background, value v is class v - 1, no ignore index
    assert label_build(tmp_path, "default") == [black, pal[1], pal[5], pal[255]]
    # explicit: ids from 0, value 5 ignored; id 255 wraps to the colour of id 0 (a 255-colour palette)
    assert label_build(tmp_path, "explicit", label_offset=0, ignore_index=5) == [pal[1], pal[2], black, pal[1]]
    with pytest.raises(InputError, match="unknown label preset 'kitti'"):
        label_build(tmp_path, "bad", label_preset="kitti")


def rain_pairs(root, n=5):
    for i in range(n):
        save(solid(20 * i + 10, SIZE), root / "rain" / f"rain-{i:03d}.png")
        save(solid(20 * i + 15, SIZE), root / "norain" / f"norain-{i:03d}.png")
    save(solid(250, SIZE), root / "rain" / "rain-099.png")  # no partner
    save(solid(250, SIZE), root / "norain" / "junk.png")  # matches no template


def test_pairs_stem_templates_and_unmatched_warning(tmp_path, capsys):
    rain_pairs(tmp_path / "p")
    src = SourceConfig(type="pairs", path=str(tmp_path / "p"), image_dir="rain", tasks=["norain"],
                       stem_templates={"rain": "rain-{stem}", "norain": "norain-{stem}"})
    _, samples, cfg = run_build(tmp_path, [src])
    err = capsys.readouterr().err
    assert "1 of 6 images" in err and "rain-099.png" in err and "no partner" in err
    assert "junk.png" in err and "do not match the stem rule" in err
    assert collect_stats(cfg.out)["failures"] == {"pair_missing_side": 1}
    (s,), (m,) = samples, metas(samples)
    assert sorted(m["stems"]) == [f"{i:03d}" for i in range(5)]
    ims = [np.asarray(im).mean() for im in sample_images(s)]
    for j, (a, b) in enumerate(m["paths"]):
        assert Path(a).name == "rain-" + m["stems"][j] + ".png" and Path(b).name == "norain-" + m["stems"][j] + ".png"
        assert abs(ims[2 * j + 1] - ims[2 * j] - 5) < 1
    with pytest.raises(InputError, match="no file pairs with an image") as e:  # without templates nothing pairs
        run_build(tmp_path, [SourceConfig(type="pairs", path=str(tmp_path / "p"), image_dir="rain", tasks=["norain"])],
                  name="o2")
    assert "\n" not in str(e.value)
    with pytest.raises(InputError, match="unknown folders"):
        run_build(tmp_path, [SourceConfig(type="pairs", path=str(tmp_path / "p"), image_dir="rain", tasks=["norain"],
                                          stem_templates={"rian": "rain-{stem}"})], name="o3")


def sidd_tree(root, noisy_dir, gt_dir, scenes=("0001_S6", "0002_GP")):
    """{noisy_dir}/<scene>/NOISY_SRGB_010.PNG and {gt_dir}/<scene>/GT_SRGB_010.PNG (and 011); returns root."""
    for scene in scenes:
        for i in (10, 11):
            save(solid(i, SIZE), root / noisy_dir / scene / f"NOISY_SRGB_{i:03d}.PNG")
            save(solid(i + 100, SIZE), root / gt_dir / scene / f"GT_SRGB_{i:03d}.PNG")
    return root


def test_pairs_stem_regex_sidd_and_missing_side(tmp_path, capsys):
    root = sidd_tree(tmp_path / "sidd", "noisy", "gt")
    os.remove(root / "gt" / "0002_GP" / "GT_SRGB_011.PNG")
    src = SourceConfig(type="pairs", path=str(root), image_dir="noisy", tasks=["gt"], stem_regex=r"SRGB_(?P<stem>\d+)$")
    _, samples, cfg = run_build(tmp_path, [src])
    err = capsys.readouterr().err
    assert "1 of 4 images" in err and "0002_GP/NOISY_SRGB_011.PNG" in err
    assert sorted(sample_meta(samples[0])["stems"]) == ["0001_S6/010", "0001_S6/011", "0002_GP/010"]
    assert collect_stats(cfg.out)["failures"] == {"pair_missing_side": 1}
    with pytest.raises(InputError, match="named group"):
        run_build(tmp_path, [SourceConfig(type="pairs", path=str(root), image_dir="noisy", tasks=["gt"],
                                          stem_regex=r"SRGB_(\d+)")], name="o2")


def test_pairs_in_one_folder_told_apart_by_name(tmp_path, capsys):
    # SIDD as it ships: Data/<scene>/NOISY_SRGB_010.PNG beside GT_SRGB_010.PNG
    root = sidd_tree(tmp_path / "SIDD_Medium_Srgb", "Data", "Data", scenes=("0001_001_S6", "0002_001_GP"))
    src = SourceConfig(type="pairs", path=str(root), image_dir="Data", tasks=["denoise"], task_dirs={"denoise": "Data"},
                       stem_templates={"Data": "NOISY_SRGB_{stem}", "denoise": "GT_SRGB_{stem}"})
    _, samples, cfg = run_build(tmp_path, [src])
    assert "warning" not in capsys.readouterr().err  # the other side's files are not "unmatched" here
    m = sample_meta(samples[0])
    assert sorted(m["stems"]) == ["0001_001_S6/010", "0001_001_S6/011", "0002_001_GP/010", "0002_001_GP/011"]
    for noisy, gt in m["paths"]:
        assert "NOISY_SRGB_" in noisy and gt == noisy.replace("NOISY_SRGB_", "GT_SRGB_")
    assert collect_stats(cfg.out)["failures"] == {}


def test_tuple_subsets_sizes_pattern_and_meta(tmp_path):
    root, tasks = tmp_path / "t", ["depth", "edges", "normals"]
    for i in range(24):
        save(solid(10 * i, SIZE), root / "images" / f"x{i}.png")
        for k, t in enumerate(tasks):
            save(solid(10 * i + k + 1, SIZE), root / t / f"x{i}.png")
    src = SourceConfig(type="pairs", path=str(root), tasks=tasks, tuples=True, tuple_subsets=True)
    _, samples, _ = run_build(tmp_path, [src])
    sizes = []
    for s, m in zip(samples, metas(samples)):
        assert m["kind"] == "tuples" and m["annotations"] == tasks and "tuple_size" not in m
        assert len(m["tuple_sizes"]) == len(m["tuple_annotations"]) == len(m["stems"])
        assert sum(m["tuple_sizes"]) == m["n_images"] <= 16
        vals, at = [np.asarray(im).mean() for im in sample_images(s)], 0
        for n, chosen in zip(m["tuple_sizes"], m["tuple_annotations"]):
            assert 1 <= n <= len(tasks) + 1 and len(chosen) == n - 1
            assert chosen == [t for t in tasks if t in chosen]  # in task order, no repeats
            base = vals[at]
            assert np.allclose(vals[at + 1:at + n], [base + tasks.index(t) + 1 for t in chosen], atol=0.6)
            at += n
        sizes += m["tuple_sizes"]
    assert len(sizes) == 24 and set(sizes) == {1, 2, 3, 4}
    a = run_build(tmp_path, [SourceConfig(type="annotate", path=str(root), tasks=["edges", "colorization"],
                                          tuples=True, tuple_subsets=True)], name="o2")[1]
    ms = metas(a)
    assert {n for m in ms for n in m["tuple_sizes"]} <= {1, 2, 3} and sum(len(m["stems"]) for m in ms) == 24
    with pytest.raises(InputError, match="tuple_subsets needs tuples"):
        run_build(tmp_path, [SourceConfig(type="pairs", path=str(root), tasks=tasks, tuple_subsets=True)], name="o3")


def count_listings(monkeypatch):
    """Count every folder listing (os.scandir / os.listdir / Path.iterdir / glob) from now on."""
    calls = []
    for mod, name in ((os, "scandir"), (os, "listdir"), (Path, "iterdir"), (Path, "glob"), (Path, "rglob")):
        orig = getattr(mod, name)

        def counted(*a, _orig=orig, _name=name, **kw):
            calls.append(_name)
            return _orig(*a, **kw)

        monkeypatch.setattr(mod, name, counted)
    return calls


@pytest.mark.parametrize("kind", ["pairs", "annotate"])
def test_make_lists_no_folder(tmp_path, monkeypatch, kind):
    mirrored_tree(tmp_path / "d", per=4)
    (tmp_path / "d" / "segmentation").symlink_to(tmp_path / "d" / "labels")
    scfg = SourceConfig(type=kind, path=str(tmp_path / "d"), tasks=["segmentation"], pairs_per_sequence=2)
    src = make_source(scfg, DataConfig(image_size=SIZE, sources=[scfg]))
    units = src.plan()
    calls = count_listings(monkeypatch)
    out = [x for u in units for x in make_source(scfg, DataConfig(image_size=SIZE, sources=[scfg])).make(
        u, np.random.default_rng(0), 0)]
    assert calls == [] and len(out) == len(units) == 4
    assert all(type(x).__name__ == "Sequence" for x in out)


def test_unmatched_listing_is_capped(tmp_path, capsys):
    from data_builders.sources.base import MAX_LISTED, check_partners, stem_index

    for i in range(15):
        save(solid(i, 8), tmp_path / "img" / f"a{i:02d}.png")
    for i in range(3):
        save(solid(i, 8), tmp_path / "ann" / f"a{i:02d}.png")
    check_partners(stem_index(tmp_path / "img"), stem_index(tmp_path / "ann"))
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "12 of 15 images" in line and line.endswith(", ...") and line.count(".png") == MAX_LISTED


@pytest.mark.parametrize("source", ["annotate", "pairs"])
def test_bench_scale_runs(source, capsys):
    from lvm.cli import main

    assert main(["bench", "data", "--scale", "20,40", "--source", source, "--units", "3"]) == 0
    out = capsys.readouterr().out
    assert "N=20:" in out and "N=40:" in out and "make time per item, N=40 over N=20: x" in out


def test_segmentation_targets_keep_exact_palette_colours(tmp_path):
    # a 3-class label map at 3x the output size with edges off the resize grid: a bicubic resize would
    # invent blended colours at every edge, which name no class
    root = tmp_path / "seg"
    rng = np.random.default_rng(0)
    labels = np.kron(rng.integers(0, 4, (7, 7)), np.ones((7, 7), np.uint8)).astype(np.uint8)[:SIZE * 3, :SIZE * 3]
    save(Image.fromarray(np.full(labels.shape + (3,), 128, np.uint8)), root / "images" / "a.png")
    save(Image.fromarray(labels), root / "labels" / "a.png")
    _, samples, _ = run_build(tmp_path, [SourceConfig(type="annotate", path=str(root), tasks=["segmentation"])])
    target = np.asarray(sample_images(samples[0])[1]).reshape(-1, 3)
    allowed = {(0, 0, 0)} | {tuple(int(v) for v in PALETTE[c + 1]) for c in range(3)}
    assert {tuple(int(v) for v in px) for px in np.unique(target, axis=0)} <= allowed


def test_malformed_box_json_is_a_skipped_item_not_a_failed_build(tmp_path):
    root = tmp_path / "ann"
    for stem, boxes in (("good", [[2, 2, 20, 20, 1]]), ("bad", [[1, 2]])):  # "bad": a box of 2 numbers
        save(solid(90, SIZE), root / "images" / f"{stem}.png")
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"{stem}.json").write_text(json.dumps({"boxes": boxes}))
    _, samples, cfg = run_build(tmp_path, [SourceConfig(type="annotate", path=str(root), tasks=["boxes"])])
    assert collect_stats(cfg.out)["failures"] == {"annotation_corrupt": 1}
    assert sample_meta(samples[0])["stems"] == ["good"]
