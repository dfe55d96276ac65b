import hashlib

import numpy as np
import pytest
import webdataset as wds

from data_builders.shards import TarShardWriter, check_key, decode_tokens, iter_token_shard, write_token_shard
from lvm_base.tar import list_shards
from lvm_base.errors import InputError


def _items(n=3):
    rng = np.random.default_rng(0)
    return [(f"seq_{i:04d}", rng.integers(0, 8192, (i + 1, 256)), {"kind": "video", "stride": 10})
            for i in range(n)]


def test_token_shard_round_trip_and_webdataset_compatible(tmp_path):
    path = tmp_path / "tokens-000000.tar"
    assert write_token_shard(path, _items()) == 3
    got = list(iter_token_shard(path))
    for (k, c, m), (k2, c2, m2) in zip(_items(), got):
        assert k == k2 and (c == c2).all() and c2.dtype == np.int64 and m2["kind"] == "video"
        assert m2["n_images"] == c.shape[0]
    # Readable by webdataset itself (keys without dots, grouped members).
    ds = wds.WebDataset(str(path), shardshuffle=False)
    samples = list(ds)
    assert [s["__key__"] for s in samples] == [k for k, _, _ in _items()]
    assert (decode_tokens(samples[2]["tokens.npy"]) == _items()[2][1]).all()


def test_shards_are_byte_identical_and_atomic(tmp_path):
    a, b = tmp_path / "a.tar", tmp_path / "b.tar"
    write_token_shard(a, _items())
    write_token_shard(b, _items())
    assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()
    with pytest.raises(RuntimeError):
        with TarShardWriter(tmp_path / "c.tar") as w:
            w.write({"__key__": "x", "json": b"{}"})
            raise RuntimeError("killed")
    assert not (tmp_path / "c.tar").exists() and not list(tmp_path.glob(".*"))


def test_bad_keys_and_bad_shards(tmp_path):
    with pytest.raises(ValueError):
        check_key("a.b")
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"garbage" * 100)
    with pytest.raises(InputError, match="bad.tar"):
        list(iter_token_shard(bad))
    with pytest.raises(InputError, match="no .tar shards"):
        list_shards(tmp_path / "empty_dir_*")
    assert list_shards(tmp_path) == [bad]


def test_one_reader_for_every_shard_spec(tmp_path):
    """Directories, files, globs, brace ranges and lists name shards alike, for data builders and tokenizer."""
    from tokenizer.data import shard_list
    from lvm_base.tar import iter_tar_members, list_shards as tar_list_shards

    assert list_shards is tar_list_shards
    (tmp_path / "sub").mkdir()
    paths = [tmp_path / f"s-{i:03d}.tar" for i in range(3)] + [tmp_path / "sub" / "s-009.tar"]
    for p in paths:
        write_token_shard(p, _items(1))
    (tmp_path / ".s-tmp.tar").write_bytes(b"")  # a writer's temp file is never a shard
    assert list_shards(tmp_path) == sorted(paths)
    assert list_shards(str(tmp_path / "s-{000..002}.tar")) == paths[:3]
    assert list_shards(str(tmp_path / "s-00[12].tar")) == paths[1:3]
    assert list_shards(str(tmp_path / "*" / "s-{009..009}.tar")) == paths[3:]
    assert list_shards([paths[2], str(tmp_path / "s-000.tar")]) == [paths[2], paths[0]]
    with pytest.raises(InputError, match="no such shard file"):
        list_shards(str(tmp_path / "s-{000..004}.tar"))
    assert shard_list(str(tmp_path / "s-{000..001}.tar")) == [str(p) for p in paths[:2]]
    assert shard_list(str(tmp_path)) is None  # a folder is an image folder for the tokenizer
    assert [n for n, _ in iter_tar_members(paths[0])] == ["seq_0000.tokens.npy", "seq_0000.json"]
