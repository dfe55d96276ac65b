import itertools

import numpy as np
import pytest
from torch.utils.data import DataLoader

from data_builders.shards import write_token_shard
from data_builders.token_stream import TokenStream, items_before


def _make(root, name, n_shards, per_shard):
    d = root / name
    d.mkdir()
    for s in range(n_shards):
        items = [(f"{name}_{s}_{i}", np.full((1 + i % 3, 4), s * 100 + i), {"kind": name})
                 for i in range(per_shard)]
        write_token_shard(d / f"tokens-{s:06d}.tar", items)
    return d


def _keys(ds, workers):
    dl = DataLoader(ds, batch_size=None, num_workers=workers, collate_fn=lambda x: x)
    return [k for k, _, _ in dl]


@pytest.mark.parametrize("n_shards", [7, 2])  # more shards than consumers, and fewer
def test_ranks_and_workers_split_without_duplicates_or_loss(tmp_path, n_shards):
    d = _make(tmp_path, "a", n_shards, 5)
    all_keys = {f"a_{s}_{i}" for s in range(n_shards) for i in range(5)}
    got = []
    for rank in range(2):
        ds = TokenStream([str(d)], seed=3, loop=False, rank=rank, world_size=2, shuffle_buffer=4)
        got += _keys(ds, workers=2)
    assert len(got) == len(all_keys) and set(got) == all_keys


def test_shuffled_and_deterministic(tmp_path):
    d = _make(tmp_path, "a", 4, 8)
    a = _keys(TokenStream([str(d)], seed=1, loop=False), 0)
    b = _keys(TokenStream([str(d)], seed=1, loop=False), 0)
    c = _keys(TokenStream([str(d)], seed=2, loop=False), 0)
    plain = _keys(TokenStream([str(d)], shuffle=False, loop=False), 0)
    assert a == b and a != c and a != plain and sorted(a) == sorted(plain)


def test_weighted_mixing(tmp_path):
    a, b = _make(tmp_path, "a", 2, 10), _make(tmp_path, "b", 2, 10)
    ds = TokenStream([str(a), str(b)], weights=[3, 1], seed=0)  # loops forever
    keys = [k for k, _, _ in itertools.islice(iter(ds), 800)]
    frac_a = sum(k.startswith("a_") for k in keys) / len(keys)
    assert 0.68 < frac_a < 0.82


def test_resume_position_skips_exactly_what_was_consumed(tmp_path):
    d = _make(tmp_path, "a", 3, 10)

    def pairs(it):  # a stand-in for the packer: items -> rows
        while True:
            chunk = list(itertools.islice(it, 2))
            if not chunk:
                return
            yield "+".join(k for k, _, _ in chunk)

    def batches(skip):
        ds = TokenStream([str(d)], seed=5, pipeline=pairs)
        ds.set_position(skip, 3)
        dl = DataLoader(ds, batch_size=3, num_workers=2, collate_fn=lambda x: x)
        return list(itertools.islice(iter(dl), 10 - skip))

    full = batches(0)
    assert batches(4) == full[4:]
    assert items_before(5, 3, 0, 2) == 9 and items_before(5, 3, 1, 2) == 6


def test_bad_shard_is_skipped_and_counted(tmp_path, capsys):
    d = _make(tmp_path, "a", 2, 3)
    (d / "tokens-000009.tar").write_bytes(b"not a tar at all" * 100)
    ds = TokenStream([str(d)], shuffle=False, loop=False)
    keys = [k for k, _, _ in ds]
    assert len(keys) == 6 and ds.bad_shards == 1
    assert "tokens-000009.tar" in capsys.readouterr().err


def _tag_worker(it):  # a pipeline that records which DataLoader worker produced each item
    from torch.utils.data import get_worker_info

    info = get_worker_info()
    for key, _, _ in it:
        yield (info.id if info is not None else 0), key


@pytest.mark.parametrize("n_shards", [9, 3])  # whole shards per consumer, and samples split inside shards
def test_two_ranks_two_workers_are_disjoint_and_make_the_one_rank_stream(tmp_path, n_shards):
    d = _make(tmp_path, "a", n_shards, 4)
    one = _keys(TokenStream([str(d)], seed=7, loop=False, shuffle_buffer=4), 0)
    assert len(one) == n_shards * 4
    parts = {}
    for rank in range(2):
        ds = TokenStream([str(d)], seed=7, loop=False, rank=rank, world_size=2, shuffle_buffer=4,
                         pipeline=_tag_worker)
        for worker, key in DataLoader(ds, batch_size=None, num_workers=2, collate_fn=lambda x: x):
            parts.setdefault((rank, worker), []).append(key)
    assert sorted(parts) == [(0, 0), (0, 1), (1, 0), (1, 1)] and all(parts.values())
    seen = [k for keys in parts.values() for k in keys]
    assert len(seen) == len(set(seen))  # the 4 consumers are pairwise disjoint
    assert sorted(seen) == sorted(one)  # and together they are the 1-rank stream
