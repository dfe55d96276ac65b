"""Training data of `lvm train`: token shards -> packed rows (lvm.train.packing) -> DataLoader batches."""

from __future__ import annotations

import numpy as np
import torch

from data_builders.token_stream import TokenStream
from lvm.train.config import TrainConfig
from lvm.train.packing import Packer, collate_rows
from lvm_base.errors import InputError

WARN_SKIPPED = 10  # warnings printed about sequences that do not fit the model
GIVE_UP_SKIPPED = 100  # sequences that do not fit, before any that does, that end the run


class PackRows:
    """TokenStream pipeline: (key, codes, meta) items -> packed row dicts (runs inside DataLoader workers)."""

    def __init__(self, seq_len: int, layout, open_rows: int = 8):
        self.seq_len, self.layout, self.open_rows = seq_len, layout, open_rows

    def __call__(self, items):
        lay = self.layout
        p = Packer(self.seq_len, lay.pad_id, lay.tokens_per_image, self.open_rows)
        used = skipped = 0
        for key, codes, meta in items:
            if codes.ndim != 2 or codes.shape[1] != lay.tokens_per_image or codes.size == 0 \
                    or not lay.is_image_code(codes).all():
                # Wrong tokenizer for this model (e.g. K mismatch): skip, never train on ids >= K.
                skipped += 1
                if skipped <= WARN_SKIPPED:
                    print(f"warning: skipping sequence {key}: codes {codes.shape} in "
                          f"[{codes.min()}, {codes.max()}], the model needs [0, {lay.codebook_size})")
                if used == 0 and skipped >= GIVE_UP_SKIPPED:
                    raise InputError(f"the first {skipped} sequences do not fit the model (codes outside "
                                     f"[0, {lay.codebook_size}) or not {lay.tokens_per_image} per image): "
                                     "were these shards made with another tokenizer?")
                continue
            used += 1
            yield from p.add(codes)
        yield from p.flush()


def make_loader(cfg: TrainConfig, layout, seq_len: int, rank: int, world: int, eval: bool = False):
    """(TokenStream, DataLoader of packed micro-batches) of the training or (eval=True) held-out shards."""
    sources = cfg.data.source_list(eval)
    ds = TokenStream(sources, None if eval else cfg.data.weights, seed=cfg.seed, shuffle=not eval,
                     shuffle_buffer=cfg.data.shuffle_buffer, loop=not eval, rank=rank, world_size=world,
                     pipeline=PackRows(seq_len, layout, cfg.open_rows))
    loader = torch.utils.data.DataLoader(ds, batch_size=cfg.micro_batch, collate_fn=collate_rows,
                                         num_workers=0 if eval else cfg.data.num_workers)
    return ds, loader


def seq_lens(batch: dict, pad_id: int) -> list[int]:
    """Lengths of the real sequences in a packed batch (for FLOP counting)."""
    ids, seg = batch["input_ids"].numpy(), batch["segment_ids"].numpy()
    out = []
    for r in range(ids.shape[0]):
        real = seg[r][ids[r] != pad_id]
        out += [int(c) for c in np.bincount(real) if c]
    return out
