"""img2dataset-style tar shards as input of the `images` source: one unit per image member, read in place.

The tars are written here: `{key}.jpg` + `.txt` + `.json` per sample, keys like 000000001, as img2dataset's
webdataset output; image k is solid gray 20 * k, so an output image tells which input it came from.
"""

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import lvm_base.tar as tar_mod
from data_builders.config import DataConfig, SourceConfig
from data_builders.sequence import sample_images, sample_meta
from data_builders.sources import make_source
from data_builders.sources.images import image_members
from lvm_base.errors import InputError
from lvm_base.tar import index_tar, iter_tar_samples, list_shards

from test_data_builders import SIZE, run_build


def jpeg(value: int, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((24, 24, 3), value, np.uint8), "RGB").save(buf, format=fmt)
    return buf.getvalue()


def add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def write_tar(path: Path, n: int, corrupt=(), prefix: str = "", formats=None) -> dict:
    """An img2dataset-style tar of n samples; `corrupt`: 1-based keys whose image is garbage. Returns
    {member name: gray value} of the good images."""
    good = {}
    with tarfile.open(path, "w") as tf:
        for k in range(1, n + 1):
            key, fmt = f"{prefix}{k:09d}", (formats or {}).get(k, "JPEG")
            ext = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}[fmt]
            add(tf, f"{key}.{ext}", b"\xff\xd8 not a jpeg" if k in corrupt else jpeg(20 * k, fmt))
            add(tf, f"{key}.txt", f"caption {k}".encode())
            add(tf, f"{key}.json", json.dumps({"key": key, "url": f"http://x/{k}.jpg"}).encode())
            if k not in corrupt:
                good[f"{key}.{ext}"] = 20 * k
    return good


def images_source(path, **kw) -> object:
    return make_source(SourceConfig(type="images", path=str(path)), DataConfig(image_size=SIZE, **kw))


def shard_stats(out) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(Path(out).glob("*.stats.json"))]


def test_img2dataset_tar_shards_hold_shard_size_sequences_and_resume(tmp_path):
    tar = tmp_path / "00000.tar"
    good = write_tar(tar, 8, corrupt={8}, formats={2: "PNG", 3: "WEBP"})
    res, samples, cfg = run_build(tmp_path, [SourceConfig(type="images", path=str(tar))], shard_size=3)
    per_shard = [sum(1 for _ in iter_tar_samples(sh)) for sh in list_shards(cfg.out)]
    assert per_shard == [3, 3, 1] and res["sequences"] == 7
    seen = {}
    for s in samples:
        (path,) = sample_meta(s)["paths"]
        (img,) = sample_images(s)
        assert path.startswith(f"{tar}:") and img.size == (SIZE, SIZE)
        seen[path.split(":", 1)[1]] = int(np.asarray(img).mean().round())
    assert sorted(seen) == sorted(good)  # every good image once, and its own pixels
    assert all(abs(seen[n] - v) <= 2 for n, v in good.items())
    stats = shard_stats(cfg.out)
    assert [st["units"] for st in stats] == [3, 3, 2]
    assert stats[-1]["failures"] == {"image_corrupt": 1}
    assert stats[-1]["failed_items"][0]["item"] == f"{tar}:000000008.jpg"
    before = {p.name: p.read_bytes() for p in Path(cfg.out).glob("*.tar")}
    again, _, _ = run_build(tmp_path, [SourceConfig(type="images", path=str(tar))], shard_size=3)
    assert again["shards_built"] == 0 and again["shards_skipped"] == 3 and again["sequences"] == 0
    assert {p.name: p.read_bytes() for p in Path(cfg.out).glob("*.tar")} == before


def test_a_skipped_member_leaves_its_shard_short(tmp_path):
    tar = tmp_path / "00000.tar"
    write_tar(tar, 7, corrupt={2})
    _, _, cfg = run_build(tmp_path, [SourceConfig(type="images", path=str(tar))], shard_size=3)
    assert [(st["units"], st["sequences"]) for st in shard_stats(cfg.out)] == [(3, 2), (3, 3), (1, 1)]


def test_keys_with_folders_dots_frames_and_junk(tmp_path):
    tar = tmp_path / "mixed.tar"
    with tarfile.open(tar, "w") as tf:
        d = tarfile.TarInfo("a.b")
        d.type = tarfile.DIRTYPE
        tf.addfile(d)
        add(tf, "a.b/000000001.jpg", jpeg(10))  # a dot in the folder, not in the key
        add(tf, "a.b/000000001.txt", b"cap")
        add(tf, "sub/dir/000000002.WEBP", jpeg(20, "WEBP"))
        add(tf, "._000000003.jpg", b"AppleDouble junk")
        add(tf, "README", b"no dot: not a sample")
        add(tf, "seq.1.png", jpeg(40, "PNG"))  # stage-1 frames: in frame order, other images left out
        add(tf, "seq.0.png", jpeg(30, "PNG"))
        add(tf, "seq.mask.png", jpeg(0, "PNG"))
        add(tf, "seq.json", b"{}")
        link = tarfile.TarInfo("000000004.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "a.b/000000001.jpg"
        tf.addfile(link)
    names = [m[0] for m in image_members(index_tar(tar).members)]
    assert names == ["a.b/000000001.jpg", "sub/dir/000000002.WEBP", "seq.0.png", "seq.1.png"]
    src = images_source(tar)
    values = [int(np.asarray(src.make(u, None, 0)[0].images[0]).mean().round()) for u in src.plan()]
    assert [abs(v - w) <= 2 for v, w in zip(values, (10, 20, 30, 40))] == [True] * 4


def test_make_reads_only_its_members_bytes(tmp_path, monkeypatch):
    tar = tmp_path / "00000.tar"
    write_tar(tar, 5)
    src = images_source(tar)
    unit = src.plan()[3]
    assert unit[:3] == ("member", str(tar), "000000004.jpg") and unit[4] == len(jpeg(80))
    read, opened = [], []
    real_open = open

    class Counting:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

        def seek(self, n):
            return self.f.seek(n)

        def read(self, n=-1):
            data = self.f.read(n)
            read.append(len(data))
            return data

    def spy(path, mode="r", *a, **kw):
        opened.append(str(path))
        return Counting(real_open(path, mode, *a, **kw))

    monkeypatch.setattr(tar_mod, "open", spy, raising=False)
    monkeypatch.setattr(tarfile, "open", lambda *a, **kw: pytest.fail("make() must not scan the tar"))
    (seq,) = src.make(unit, None, 0)
    assert opened == [str(tar)] and read == [unit[4]]  # one read, of that member's bytes only
    assert abs(int(np.asarray(seq.images[0]).mean().round()) - 80) <= 2


def test_truncated_tar_skips_the_cut_member(tmp_path):
    tar = tmp_path / "00000.tar"
    write_tar(tar, 4)
    last = index_tar(tar).members[-3]  # 000000004.jpg
    data = tar.read_bytes()
    tar.write_bytes(data[: last[1] + last[2] // 2])  # a download cut in the middle of the last image
    idx = index_tar(tar)
    assert idx.error == "" and idx.members[-1][0] == "000000004.jpg"
    res, _, cfg = run_build(tmp_path, [SourceConfig(type="images", path=str(tar))], shard_size=3)
    assert res["sequences"] == 3 and shard_stats(cfg.out)[-1]["failures"] == {"image_truncated": 1}


def corrupt_header(tar: Path, member: int) -> int:
    """Overwrite the header of the member-th member with garbage; returns its byte offset."""
    with tarfile.open(tar) as tf:
        offset = tf.getmembers()[member].offset
    data = bytearray(tar.read_bytes())
    data[offset:offset + 512] = b"garbage!" * 64
    tar.write_bytes(bytes(data))
    return offset


def test_corrupt_tar_alone_is_an_input_error(tmp_path):
    tar = tmp_path / "00000.tar"
    write_tar(tar, 4)
    offset = corrupt_header(tar, 6)  # 000000003.jpg
    with pytest.raises(InputError) as e:
        images_source(tar).plan()
    msg = str(e.value)
    assert "\n" not in msg and str(tar) in msg and f"bad header at byte {offset}" in msg
    (tmp_path / "junk.tar").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(InputError, match="junk.tar: corrupt tar shard: not a tar"):
        images_source(tmp_path / "junk.tar").plan()
    gz = tmp_path / "gz" / "00000.tar"
    gz.parent.mkdir()
    with tarfile.open(gz, "w:gz") as tf:
        add(tf, "000000001.jpg", jpeg(10))
    with pytest.raises(InputError, match="gzip-compressed; decompress it"):
        images_source(gz).plan()


def test_corrupt_tar_among_many_is_skipped_and_counted(tmp_path):
    d = tmp_path / "shards"
    d.mkdir()
    good = write_tar(d / "00000.tar", 3)
    good |= write_tar(d / "00001.tar", 3, prefix="1")
    corrupt_header(d / "00001.tar", 6)  # its first two samples are still read
    (d / "00002.tar").write_bytes(b"\x00\x01" * 600)
    (d / "00000.parquet").write_bytes(b"PAR1")  # img2dataset's metadata beside its tars: ignored
    res, samples, cfg = run_build(tmp_path, [SourceConfig(type="images", path=str(d))], shard_size=4)
    got = sorted(Path(sample_meta(s)["paths"][0].split(":", 1)[1]).name for s in samples)
    assert got == sorted(n for n in good if not n.startswith("1000000003"))
    fails = [f for st in shard_stats(cfg.out) for f in st["failed_items"]]
    assert [f["reason"] for f in fails] == ["shard_corrupt", "shard_corrupt"]
    assert "00001.tar: bad header at byte" in fails[0]["item"] and "00002.tar: not a tar" in fails[1]["item"]


def test_limit_stops_indexing_and_parquet_is_refused(tmp_path):
    d = tmp_path / "shards"
    d.mkdir()
    write_tar(d / "00000.tar", 3)
    (d / "00001.tar").write_bytes(b"never scanned" * 100)
    assert len(images_source(d, limit=2).plan()) == 3
    pq = tmp_path / "laion.parquet"
    pq.write_bytes(b"PAR1")
    with pytest.raises(InputError) as e:
        images_source(pq).plan()
    assert "\n" not in str(e.value) and str(pq) in str(e.value) and "run img2dataset on it first" in str(e.value)
