"""Packing whole visual sequences into fixed-length training rows, following the token contract.

A row of `T` tokens holds several visual sequences back to back, then padding:

    tokens     [a0 a1 ... a511 | b0 ... b255 | PAD PAD ...]
    positions  [0  1  ... 511  | 0  ...  255 | 0   1   ...]      restart at each sequence (image-aligned)
    segments   [0  0  ... 0    | 1  ...  1   | 2   2   ...]      attention stays inside a segment
    targets    [a1 a2 ... -100 | b1 ... -100 | -100 ...]          next token of the same sequence, else -100

`targets` are already shifted (target[t] is the token predicted from position t), so the loss is plain
cross-entropy of logits[t] vs target[t]; nothing is learned across a boundary or on padding. The padding
is its own segment (causal inside itself) so no attention row is empty (an all-masked row gives NaN).

Two equivalent ways to keep attention inside each sequence (`model_inputs(batch, mode)`):
- "mask": a 4-D boolean (B, 1, T, T) block-diagonal causal mask, which HF `LlamaForCausalLM` takes as is
  (sdpa/eager attention);
- "varlen" (what `lvm train` uses): rows flattened to one, sequence boundaries as `lvm_cu_seqlens`, and
  `packed_attention` registered as an HF attention implementation runs causal SDPA per sequence. With
  flash-attention varlen kernels the restarting `position_ids` alone carry the same information (HF
  derives cu_seqlens from them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lvm.tokens import TOKENS_PER_IMAGE

IGNORE = -100


@dataclass(eq=False)  # rows are compared by identity (list.remove)
class PackedRow:
    """One row under construction: a list of flat token arrays (each a whole visual sequence)."""

    capacity: int
    seqs: list = field(default_factory=list)
    used: int = 0

    def room(self) -> int:
        return self.capacity - self.used

    def add(self, tokens: np.ndarray) -> None:
        self.seqs.append(tokens)
        self.used += len(tokens)


def split_to_context(codes: np.ndarray, max_images: int) -> list[np.ndarray]:
    """(n_images, 256) codes -> flat token arrays of at most `max_images` whole images each.

    A sequence longer than the context (e.g. a 16-image sequence in a 4-image test context) becomes
    consecutive chunks, each a visual sequence in its own right starting at position 0.
    """
    n = codes.shape[0]
    return [codes[i:i + max_images].reshape(-1) for i in range(0, n, max_images)]


def row_arrays(seqs: list[np.ndarray], length: int, pad_id: int, tokens_per_image: int = TOKENS_PER_IMAGE) -> dict:
    """Flat arrays of one packed row: input_ids, position_ids, segment_ids, targets, last_image.

    `last_image` marks target tokens that belong to the last image of a sequence of >= 2 images (the
    tokens scored by next-image perplexity).
    """
    ids = np.full(length, pad_id, dtype=np.int64)
    pos = np.zeros(length, dtype=np.int64)
    seg = np.zeros(length, dtype=np.int64)
    tgt = np.full(length, IGNORE, dtype=np.int64)
    last = np.zeros(length, dtype=bool)
    at = 0
    for s, toks in enumerate(seqs):
        n = len(toks)
        if at + n > length:
            raise ValueError(f"sequences of {at + n} tokens do not fit a row of {length}")
        ids[at:at + n] = toks
        pos[at:at + n] = np.arange(n)
        seg[at:at + n] = s
        tgt[at:at + n - 1] = toks[1:]
        if n >= 2 * tokens_per_image:
            # Targets t = start-1 .. end-2 predict the last image's tokens (except its first, which is
            # predicted from the previous image's last token: include it, it is a real next-token target).
            first = at + n - tokens_per_image - 1
            last[first:at + n - 1] = True
        at += n
    if at < length:
        pos[at:] = np.arange(length - at)
        seg[at:] = len(seqs)
    return {"input_ids": ids, "position_ids": pos, "segment_ids": seg, "targets": tgt, "last_image": last}


class Packer:
    """Greedy best-fit packing of whole sequences into rows of `length` tokens.

    Keeps up to `open_rows` partially filled rows; each incoming sequence goes into the open row with the
    least room that still fits it; when none fits and all slots are taken, the fullest row is emitted.
    With a handful of open rows the padded fraction on mixed-length data stays at a few percent.
    """

    def __init__(self, length: int, pad_id: int, tokens_per_image: int = TOKENS_PER_IMAGE, open_rows: int = 8):
        if length % tokens_per_image:
            raise ValueError(f"row length {length} is not a multiple of {tokens_per_image}")
        self.length, self.pad_id, self.tpi, self.open_rows = length, pad_id, tokens_per_image, open_rows
        self.rows: list[PackedRow] = []
        self.real_tokens = 0
        self.emitted_tokens = 0

    def _emit(self, row: PackedRow) -> dict:
        self.real_tokens += row.used
        self.emitted_tokens += self.length
        return row_arrays(row.seqs, self.length, self.pad_id, self.tpi)

    def add(self, codes: np.ndarray) -> list[dict]:
        """Add one visual sequence ((n_images, 256) codes); returns the rows completed by it."""
        out = []
        for toks in split_to_context(np.asarray(codes), self.length // self.tpi):
            fits = [r for r in self.rows if r.room() >= len(toks)]
            if fits:
                row = min(fits, key=PackedRow.room)
            else:
                if len(self.rows) >= self.open_rows:
                    fullest = min(self.rows, key=PackedRow.room)
                    self.rows.remove(fullest)
                    out.append(self._emit(fullest))
                row = PackedRow(self.length)
                self.rows.append(row)
            row.add(toks)
            if row.room() == 0:
                self.rows.remove(row)
                out.append(self._emit(row))
        return out

    def flush(self) -> list[dict]:
        rows, self.rows = self.rows, []
        return [self._emit(r) for r in sorted(rows, key=PackedRow.room)]

    @property
    def padded_fraction(self) -> float:
        return 1.0 - self.real_tokens / self.emitted_tokens if self.emitted_tokens else 0.0


def pack_sequences(seqs, length: int, pad_id: int, tokens_per_image: int = TOKENS_PER_IMAGE, open_rows: int = 8):
    """Pack an iterable of (n_images, 256) code arrays; returns (list of row dicts, padded fraction)."""
    p = Packer(length, pad_id, tokens_per_image, open_rows)
    rows = [r for s in seqs for r in p.add(s)] + p.flush()
    return rows, p.padded_fraction


def collate_rows(rows: list[dict]):
    """Row dicts (numpy) -> a batch of torch tensors (B, T) each."""
    import torch

    return {k: torch.from_numpy(np.stack([r[k] for r in rows])) for k in rows[0]}


def block_causal_mask(segment_ids):
    """(B, T) segment ids -> (B, 1, T, T) boolean mask: True where query q may attend key k."""
    import torch

    T = segment_ids.shape[-1]
    causal = torch.ones(T, T, dtype=torch.bool, device=segment_ids.device).tril()
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    return (same & causal)[:, None]


PACKED_ATTENTION = "lvm_packed"


def packed_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                     lvm_cu_seqlens=None, **kwargs):
    """HF attention function for packed rows: causal SDPA on each sequence's slice ("varlen" on any device).

    `lvm_cu_seqlens` (a tuple of ints: 0, end of sequence 1, ..., total) comes through the model's
    forward kwargs. Each segment runs the dense causal kernel on its own tokens, which is exactly the
    block-diagonal causal mask but skips the masked-out blocks (on CPU a masked SDPA over the full row
    costs ~2x the causal kernel, and the per-segment kernels do only the useful part). Without
    `lvm_cu_seqlens` (e.g. generation) this is plain SDPA.
    """
    import torch
    import torch.nn.functional as F
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    if lvm_cu_seqlens is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    # split (one cat in backward) rather than slicing (a zero-filled full-size gradient per slice), and
    # contiguous pieces: the CPU flash kernel is much slower on strided (B, H, T, D) views in bf16.
    lens = [e - s for s, e in zip(lvm_cu_seqlens[:-1], lvm_cu_seqlens[1:])]
    drop = dropout if module.training else 0.0
    outs = [F.scaled_dot_product_attention(q.contiguous(), k.contiguous(), v.contiguous(), is_causal=True,
                                           scale=scaling, dropout_p=drop)
            for q, k, v in zip(query.split(lens, 2), key.split(lens, 2), value.split(lens, 2))]
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous(), None


def register_packed_attention() -> str:
    from transformers import AttentionInterface

    import torch

    # Kept out of torch.compile graphs: its per-sequence loop has data-dependent shapes.
    AttentionInterface.register(PACKED_ATTENTION, torch.compiler.disable(packed_attention))
    return PACKED_ATTENTION


def model_inputs(batch: dict, mode: str = "varlen") -> dict:
    """The kwargs for `LlamaForCausalLM(**...)` of a packed batch (no labels: the loss is computed outside).

    mode "mask": the (B, 1, T, T) block-causal boolean mask, for any attention implementation that takes
    a 4-D mask (sdpa, eager). mode "varlen": the rows are flattened into one (1, B*T) row and the
    sequence boundaries passed as `lvm_cu_seqlens`, for `packed_attention` (the model must have
    `set_attn_implementation(register_packed_attention())`). Logits come out (B, T, V) or (1, B*T, V).
    """
    if mode == "mask":
        return {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"],
                "attention_mask": block_causal_mask(batch["segment_ids"]), "use_cache": False}
    if mode != "varlen":
        raise ValueError(f"unknown packed attention mode {mode!r}")
    pos = batch["position_ids"].reshape(1, -1)
    starts = (pos[0] == 0).nonzero().flatten().tolist()
    return {"input_ids": batch["input_ids"].reshape(1, -1), "position_ids": pos,
            "lvm_cu_seqlens": tuple(starts) + (pos.shape[1],), "use_cache": False}
