"""Vector quantizers: latent vectors (N, dim) <-> integer codes.

Two kinds, both with the same small interface used by `VQGAN`:
  codes(z)        -> long (N,)        nearest code of each row (always fp32, autocast or not: bf16 flips
                                      near-ties)
  lookup(codes)   -> float (N, dim)   the vectors the decoder sees
  forward(z)      -> (z_q straight-through, loss, codes)   for training

- `L2Quantizer` ("l2"): plain nearest-code L2 lookup over `embedding.weight`. This is exactly what taming
  checkpoints and the released LVM tokenizer use, so it is what their weights load into.
- `NormedQuantizer` ("normed"): the lookup happens in a low-dimensional, l2-normalized space reached by an
  input projection (and left by an output projection), as in ViT-VQGAN / LlamaGen. On the unit sphere
  every code stays in reach of the encoder outputs, and dead codes are restarted from recent encoder
  outputs, so nearly all of a large codebook gets used.

Loss (VQ-VAE): ||sg[z] - e||^2 + beta * ||z - sg[e]||^2. beta weighs the *commitment* term, the one whose
gradient reaches the encoder. (taming's VectorQuantizer puts beta on the codebook term, the wrong way round;
we do not copy that.)
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

_CHUNK = 8192  # rows per similarity matrix of the "normed" quantizer: bounds memory at _CHUNK * K floats
_BLOCK_FLOATS = 1 << 19  # distance block of the l2 search: 2 MiB of fp32 stays in cache for the argmin pass


def argmin_rows(d: torch.Tensor, width: int = 128) -> torch.Tensor:
    """d.argmin(1), first occurrence on ties, via block minima: torch's argmin does not vectorize while amin
    does, so the min of each `width`-wide block picks the block, and one small argmin inside it the index."""
    n, k = d.shape
    if k % width or k <= width:
        return d.argmin(1)
    blocks = d.view(n, k // width, width)
    first = blocks.amin(2).argmin(1)  # the first block holding the row minimum
    return first * width + blocks[torch.arange(n, device=d.device), first].argmin(1)


def _no_autocast(t: torch.Tensor):
    """The code search runs in fp32 even inside a training/inference autocast region."""
    return torch.autocast(t.device.type, enabled=False)


def _vq_loss(z: torch.Tensor, q: torch.Tensor, beta: float) -> torch.Tensor:
    codebook = F.mse_loss(q, z.detach())
    commitment = F.mse_loss(z, q.detach())
    return codebook + beta * commitment


class L2Quantizer(nn.Module):
    kind = "l2"

    def __init__(self, codebook_size: int, dim: int, beta: float = 0.25):
        super().__init__()
        self.codebook_size, self.dim, self.beta = codebook_size, dim, beta
        self.embedding = nn.Embedding(codebook_size, dim)
        self.embedding.weight.data.uniform_(-1.0 / codebook_size, 1.0 / codebook_size)

    @torch.no_grad()
    def codes(self, z: torch.Tensor) -> torch.Tensor:
        """argmin_k ||z - e_k||^2, computed as argmin_k (||e_k||^2 - 2 z.e_k) in fp32, one addmm per block.

        ||z||^2 is the same for every code of a row, so dropping it does not move the minimum; it does
        change fp32 rounding, so on exact or near ties (distances within ~1e-6 relative) the chosen code
        can differ from taming's ||z||^2 + ||e||^2 - 2 z.e expansion.
        """
        with _no_autocast(z):
            z = z.float()
            e = self.embedding.weight.float()
            e2 = (e * e).sum(1)
            rows = max(16, _BLOCK_FLOATS // max(1, e.shape[0]))
            out = [argmin_rows(torch.addmm(e2, part, e.t(), alpha=-2.0)) for part in z.split(rows)]
        return torch.cat(out) if out else z.new_zeros(0, dtype=torch.long)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        return self.embedding(codes)

    def forward(self, z: torch.Tensor):
        idx = self.codes(z)
        q = self.lookup(idx)
        loss = _vq_loss(z.float(), q.float(), self.beta)
        return z + (q - z).detach(), loss, idx


class NormedQuantizer(nn.Module):
    kind = "normed"

    def __init__(self, codebook_size: int, dim: int, code_dim: int = 8, beta: float = 0.25):
        super().__init__()
        self.codebook_size, self.dim, self.code_dim, self.beta = codebook_size, dim, code_dim, beta
        self.in_proj = nn.Linear(dim, code_dim)
        self.out_proj = nn.Linear(code_dim, dim)
        self.embedding = nn.Embedding(codebook_size, code_dim)
        nn.init.normal_(self.embedding.weight)
        # Steps since each code was last chosen (training only; a buffer so it is checkpointed).
        self.register_buffer("idle_steps", torch.zeros(codebook_size, dtype=torch.long), persistent=False)
        self.initialized = False

    def project(self, z: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.in_proj(z).float(), dim=-1)

    def codebook(self) -> torch.Tensor:
        return F.normalize(self.embedding.weight.float(), dim=-1)

    @torch.no_grad()
    def _nearest(self, zn: torch.Tensor) -> torch.Tensor:
        with _no_autocast(zn):
            e = self.codebook()
            return torch.cat([(part.float() @ e.t()).argmax(1) for part in zn.split(_CHUNK)])

    @torch.no_grad()
    def codes(self, z: torch.Tensor) -> torch.Tensor:
        return self._nearest(self.project(z.float()))

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        return self.out_proj(self.codebook()[codes])

    def forward(self, z: torch.Tensor):
        zn = self.project(z)
        idx = self._nearest(zn)
        q = self.codebook()[idx]
        loss = _vq_loss(zn, q, self.beta)
        q = zn + (q - zn).detach()
        if self.training:
            self._last_zn = zn.detach()
            self._last_idx = idx
        return self.out_proj(q), loss, idx

    @torch.no_grad()
    def restart_dead_codes(self, max_idle: int, generator: torch.Generator | None = None) -> int:
        """Move codes unused for `max_idle` steps onto encoder outputs of the last training batch.

        The first call (before any step) places the whole codebook on data: a cheap stand-in for k-means init.
        Returns how many codes moved. Under DDP every rank must call it; rank 0's codebook is broadcast.
        """
        zn, idx = getattr(self, "_last_zn", None), getattr(self, "_last_idx", None)
        if zn is None:
            return 0
        self.idle_steps += 1
        self.idle_steps[idx.unique()] = 0
        if not self.initialized:
            dead = torch.arange(self.codebook_size, device=zn.device)
            self.initialized = True
        else:
            dead = (self.idle_steps >= max_idle).nonzero().flatten()
        n = int(dead.numel())
        if n:
            pick = torch.randint(0, zn.shape[0], (n,), generator=generator, device="cpu").to(zn.device)
            noise = torch.randn(n, self.code_dim, generator=generator, device="cpu").to(zn.device) * 0.01
            w = self.embedding.weight
            w.data[dead] = (zn[pick] + noise).to(w.dtype)
            self.idle_steps[dead] = 0
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.broadcast(self.embedding.weight.data, src=0)
        self._last_zn = self._last_idx = None
        return n


def build_quantizer(kind: str, codebook_size: int, dim: int, code_dim: int, beta: float) -> nn.Module:
    if kind == "l2":
        return L2Quantizer(codebook_size, dim, beta)
    if kind == "normed":
        return NormedQuantizer(codebook_size, dim, code_dim, beta)
    raise ValueError(f"quantizer must be 'l2' or 'normed', got {kind!r}")
