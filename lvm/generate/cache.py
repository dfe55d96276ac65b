"""The engine's KV cache: static, preallocated keys and values for every layer, candidate row and position.

Rows advance independently: speculative decoding accepts a different number of drafted tokens in each
candidate, so each row has its own valid length, kept by the decoding loop. Positions past a row's length
hold keys of rejected drafts or of padding; no query ever reads them, because every attention path reads a
row's positions only up to the query's own, and a pass writes its own positions before it reads them.
Rolling a row back past rejected drafts is therefore just lowering its length: nothing is erased, and the
next pass overwrites those positions.

The cache holds `capacity` positions: the context plus room for one pass of drafts after its end, where a
row that has finished its image (or nearly) is padded while the other rows go on.
"""

from __future__ import annotations

import math

import torch

from lvm_base.errors import InputError
from lvm_base.hardware import free_memory


class KVCache:
    """Keys and values, each (layers, rows, kv heads, capacity, head dim), grown to more rows on demand."""

    def __init__(self, layers: int, n_kv: int, capacity: int, head_dim: int, dtype, device):
        self.layers, self.n_kv, self.capacity, self.head_dim = layers, n_kv, capacity, head_dim
        self.dtype, self.device = dtype, torch.device(device)
        self.rows = 0
        self.k = self.v = None

    def ensure(self, rows: int) -> bool:
        """Room for `rows` candidates; True when the tensors were (re)allocated (what pointed into them is stale)."""
        if rows <= self.rows:
            return False
        shape = (self.layers, rows, self.n_kv, self.capacity, self.head_dim)
        self.k = self.v = None  # the old cache goes before the new one comes
        need = 2 * math.prod(shape) * torch.empty(0, dtype=self.dtype).element_size()
        free = free_memory(self.device)  # checked first: past it the allocator fails with a traceback
        if free is not None and need > free:
            raise InputError(f"the KV cache for {rows} candidate(s) needs {need / 2 ** 30:.1f} GiB, "
                             f"{free / 2 ** 30:.1f} GiB are free for it on {self.device}; use fewer candidates")
        self.k = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.v = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.rows = rows
        return True

    def layer(self, i: int, B: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer i's keys and values of the first B rows, (B, kv heads, capacity, head dim) views."""
        return self.k[i, :B], self.v[i, :B]

    def write(self, i: int, k: torch.Tensor, v: torch.Tensor, starts) -> None:
        """Store k, v (B, Q, kv heads, head dim) of layer i at positions starts[b] .. starts[b] + Q - 1 of each
        row b (`starts` an int: the same for every row)."""
        B, Q = k.shape[:2]
        kc, vc = self.layer(i, B)
        if isinstance(starts, int):
            kc[:, :, starts:starts + Q] = k.transpose(1, 2)
            vc[:, :, starts:starts + Q] = v.transpose(1, 2)
            return
        for b, s in enumerate(starts):
            kc[b, :, s:s + Q] = k[b].transpose(0, 1)
            vc[b, :, s:s + Q] = v[b].transpose(0, 1)

    def scatter(self, i: int, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor) -> None:
        """`write` with the positions as a (B, Q) tensor: no shape or Python value depends on them (graph-safe)."""
        B, Q, Hkv, hd = k.shape
        kc, vc = self.layer(i, B)
        idx = pos.view(B, 1, Q, 1).expand(B, Hkv, Q, hd)
        kc.scatter_(2, idx, k.transpose(1, 2))
        vc.scatter_(2, idx, v.transpose(1, 2))

    def share_row0(self, B: int, n: int) -> None:
        """Copy row 0's first n positions to rows 1..B-1 (every candidate starts from the same prompt)."""
        self.k[:, 1:B, :, :n] = self.k[:, :1, :, :n]
        self.v[:, 1:B, :, :n] = self.v[:, :1, :, :n]
