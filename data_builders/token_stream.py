"""Streaming token shards for training: shuffled, split across ranks and DataLoader workers, mixed by weight.

    ds = TokenStream([["data/video/tokens"], ["data/3d/tokens"]], weights=[0.7, 0.3], seed=0,
                     rank=rank, world_size=world, pipeline=pack_rows)
    loader = DataLoader(ds, batch_size=8, num_workers=2)

Written directly on `torch.utils.data.IterableDataset` (no webdataset pipeline) so the splitting rules are
explicit and cover the webdataset pitfalls (docs/released-lvm.md section 3):

- *Consumers.* Every (rank, worker) pair is one consumer, ``c = rank * num_workers + worker`` of
  ``C = world_size * num_workers``. Each consumer reads a disjoint part of every source per epoch: whole
  shards ``order[c::C]`` when the source has at least C shards, otherwise every shard but only the samples
  whose running index ``j % C == c`` (so fewer shards than workers still works, with no duplicates).
- *Shuffling.* The shard order of each source is a fresh permutation every epoch, the same on every
  consumer (a function of seed, source and epoch: that is what keeps the parts disjoint); then each
  consumer shuffles through a buffer of `shuffle_buffer` sequences with its own seeded generator.
- *Mixing.* Each output sequence comes from source s with probability weights[s] (per-consumer seeded
  draws). Sources loop over epochs forever (`loop=True`, training); with `loop=False` (evaluation) an
  exhausted source drops out and the stream ends when all are done.
- *Position.* Everything is a function of (seed, consumer), so a resumed run replays the same stream and
  skips what was already consumed: `skip_items` output items (after `pipeline`) per consumer, computed
  from the loader's consumed batches by `items_before(...)`. Replay re-reads the skipped shards (cost:
  reading, not training); it is exact, which is what `lvm train --resume` needs.
- *Bad data.* A shard that cannot be read (or has a corrupt sample) is skipped from that point on with a
  warning and counted in `self.bad_shards`; it never stops training.

`pipeline` (optional) maps the consumer's iterator of (key, codes, meta) to any other iterator (e.g. the
packer, so rows are built inside the workers).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from data_builders.shards import iter_token_shard
from lvm_base.tar import list_shards
from lvm_base.errors import InputError


@dataclass
class TokenStreamConfig:
    """Where training sequences come from (the `data:` section of a train config)."""

    shards: list[str] | str = "data/demo/tokens"  # one shard set (dir/glob/file) or a list of sets
    weights: list[float] | None = None  # sampling weight per shard set (default: equal)
    eval_shards: list[str] | str | None = None  # held-out shard set(s); no held-out eval if unset
    shuffle_buffer: int = 256  # sequences per consumer shuffle buffer
    num_workers: int = 0  # DataLoader workers per rank

    def source_list(self, eval: bool = False) -> list:
        spec = self.eval_shards if eval else self.shards
        if spec is None:
            return []
        return [spec] if isinstance(spec, str) else list(spec)


def items_before(consumed_batches: int, batch_size: int, worker: int, num_workers: int) -> int:
    """Items worker `worker` produced for the first `consumed_batches` batches of a DataLoader.

    A DataLoader over an iterable dataset takes batch b from worker b % num_workers (in order), so a
    worker's share of the consumed batches is the count of such b.
    """
    num_workers = max(1, num_workers)
    n = consumed_batches // num_workers + (1 if worker < consumed_batches % num_workers else 0)
    return n * batch_size


class TokenStream(torch.utils.data.IterableDataset):
    def __init__(self, sources: Sequence, weights: Sequence[float] | None = None, *, seed: int = 0,
                 shuffle: bool = True, shuffle_buffer: int = 256, loop: bool = True, rank: int = 0,
                 world_size: int = 1, pipeline: Callable[[Iterator], Iterator] | None = None):
        if isinstance(sources, (str, bytes)) or not isinstance(sources, Sequence):
            sources = [sources]
        self.sources = [list_shards(s) for s in sources]
        if weights is None:
            weights = [1.0] * len(self.sources)
        if len(weights) != len(self.sources) or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise InputError(f"data weights {list(weights)} must be {len(self.sources)} non-negative numbers "
                             "with a positive sum (one per shard set)")
        self.weights = np.asarray(weights, dtype=np.float64) / float(sum(weights))
        self.seed, self.shuffle, self.shuffle_buffer, self.loop = seed, shuffle, shuffle_buffer, loop
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, {world_size})")
        self.rank, self.world_size = rank, world_size
        self.pipeline = pipeline
        self.skip_batches = 0  # set by the trainer: consumed loader batches (see set_position)
        self.batch_size = 1
        self.bad_shards = 0

    def set_position(self, consumed_batches: int, batch_size: int) -> None:
        """Resume: the next iteration skips what the first `consumed_batches` loader batches used."""
        self.skip_batches, self.batch_size = consumed_batches, batch_size

    # ---- one consumer's view ----
    def _consumer(self) -> tuple[int, int, int, int]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return self.rank * workers + worker, self.world_size * workers, worker, workers

    def _shard_order(self, s: int, epoch: int) -> list:
        shards = self.sources[s]
        if not self.shuffle:
            return list(shards)
        perm = np.random.default_rng([self.seed, s, epoch, 7]).permutation(len(shards))
        return [shards[i] for i in perm]

    def _read(self, path) -> Iterator:
        try:
            yield from iter_token_shard(path)
        except InputError as e:
            self.bad_shards += 1
            print(f"warning: skipping the rest of {path}: {e}", file=sys.stderr)

    def _source_iter(self, s: int, c: int, C: int) -> Iterator:
        epoch = 0
        while True:
            order = self._shard_order(s, epoch)
            if len(order) >= C:
                for path in order[c::C]:
                    yield from self._read(path)
            else:
                j = 0
                for path in order:
                    for item in self._read(path):
                        if j % C == c:
                            yield item
                        j += 1
            epoch += 1
            if not self.loop:
                return

    def _mixed(self, c: int, C: int) -> Iterator:
        its = [self._source_iter(s, c, C) for s in range(len(self.sources))]
        live = [w > 0 for w in self.weights]
        rng = np.random.default_rng([self.seed, c, 11])
        while any(live):
            w = np.where(live, self.weights, 0.0)
            s = int(rng.choice(len(its), p=w / w.sum())) if len(its) > 1 else 0
            try:
                yield next(its[s])
            except StopIteration:
                live[s] = False

    def _shuffled(self, it: Iterator, c: int) -> Iterator:
        if not self.shuffle or self.shuffle_buffer <= 1:
            yield from it
            return
        rng = np.random.default_rng([self.seed, c, 13])
        buf = []
        for item in it:
            if len(buf) < self.shuffle_buffer:
                buf.append(item)
                continue
            i = int(rng.integers(len(buf)))
            buf[i], item = item, buf[i]
            yield item
        order = rng.permutation(len(buf))
        for i in order:
            yield buf[i]

    def __iter__(self):
        c, C, worker, workers = self._consumer()
        it = self._shuffled(self._mixed(c, C), c)
        if self.pipeline is not None:
            it = self.pipeline(it)
        skip = items_before(self.skip_batches, self.batch_size, worker, workers)
        for _ in range(skip):
            if next(it, None) is None:
                return
        yield from it
