"""The engine's one layer loop (`run`) and what each kind of forward pass gives it (`prefill`, `decode`,
`static`).

Every forward pass is: embed, the LLaMA layers, the final norm and the LM head. What differs between passes
is gathered in an `Ops`: the activations' dtype, how a matrix is applied, where rope's cos/sin rows come
from, how keys and values enter the cache, how attention reads it, and whether only the last position's
logits are wanted.

- `prefill`: T tokens of every row at common positions start..start+T-1 (a prompt, or the context after a
  crop): the plan's compute dtype, PyTorch matmuls and SDPA (causal; masked after cached tokens), or the
  kernels' attention over a bf16 cache where the CPU has bf16 dot products; logits of the last position only.
- `decode` (CPU): Q tokens per row at per-row positions, fp32 activations, the compiled kernels (or their
  PyTorch twins in lvm.generate.weights) reading weights and cache in their storage dtype: one-row products
  are bandwidth-bound, so fewer stored bytes are less time. Q = 1 is one plain decoding step; Q > 1
  verifies drafted tokens and scores each exactly as a one-token step would (the kernels are
  batch-invariant).
- `static` (CUDA, MPS; a CPU with static_step=True): the same per-row Q tokens, graph-safe: positions come
  as a (B, Q) tensor, rope rows by index_select, the cache by scatter, attention over a static span of the
  cache under a position mask. No shape or Python value depends on the positions, so one CUDA graph per
  (rows, Q, span) serves every position below the span (gpt-fast).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from lvm.generate import weights as W
from lvm.generate.kernels import bf16_dots


def rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    if x.dtype == torch.float32 or (x.dtype == torch.bfloat16 and x.device.type == "cpu"):
        # Written out: F.rms_norm's bf16 path costs several times these four ops on one CPU row.
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w
    # Half precision off the CPU: statistics in fp32 as HF does (fp16 squares overflow past 256).
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * w


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # HF Llama's rotate-half convention: (x1, x2) -> (x1*cos - x2*sin, x2*cos + x1*sin).
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def glu(gu: torch.Tensor) -> torch.Tensor:
    g, u = gu.chunk(2, dim=-1)
    return F.silu(g) * u


@dataclass
class Ops:
    """What one kind of forward pass does differently (module doc)."""

    layers: list            # per-layer weight dicts
    act: torch.dtype        # activations' dtype
    linear: Callable        # (x (..., I), w (O, I), bias or None) -> (..., O) in x's dtype
    cos: torch.Tensor       # rope rows, broadcasting against (B, Q, heads, head dim)
    sin: torch.Tensor
    store: Callable         # (layer, k, v): k, v (B, Q, kv heads, head dim) into the cache
    attend: Callable        # (layer, q, k, v) -> (B, Q, heads * head dim)
    norm: torch.Tensor      # the final norm's weight
    last_only: bool = False
    rms: Callable = rms     # (x, weight, eps) -> RMS-normed x
    rope: Callable = rope   # (x (B, Q, n, hd), cos, sin) -> x rotated
    glu: Callable = glu     # ([g | u] (..., 2I)) -> silu(g) * u


def run(e, tokens: torch.Tensor, ops: Ops) -> torch.Tensor:
    """The forward pass of `tokens` (B, Q) as `ops` says: float32 logits (B, Q, vocab), or (B, vocab) of the
    last position with `ops.last_only`."""
    B, Q = tokens.shape
    H, Hkv, hd, eps = e.n_heads, e.n_kv, e.head_dim, e.eps
    x = F.embedding(tokens, e.embed).to(ops.act)
    for i, w in enumerate(ops.layers):
        qkv = ops.linear(ops.rms(x, w["attn_norm"], eps), w["wqkv"], w.get("bqkv")).view(B, Q, H + 2 * Hkv, hd)
        qk = ops.rope(qkv[:, :, : H + Hkv], ops.cos, ops.sin)  # q and k share one rope call
        k, v = qk[:, :, H:], qkv[:, :, H + Hkv:]
        ops.store(i, k, v)
        x = x + ops.linear(ops.attend(i, qk[:, :, :H], k, v), w["wo"], w.get("bo"))
        x = x + ops.linear(ops.glu(ops.linear(ops.rms(x, w["mlp_norm"], eps), w["w13"], None)), w["w2"], None)
    if ops.last_only:
        x = x[:, -1]
    return ops.linear(ops.rms(x, ops.norm, eps), e.lm_head, None).float()


def torch_linear(x, w, b=None):
    """PyTorch's product in the activations' dtype; weights stored in another dtype are widened first."""
    if w.dtype != x.dtype:
        w, b = w.to(x.dtype), None if b is None else b.to(x.dtype)
    return F.linear(x, w, b)


def _sdpa(q, k, v, mask, causal: bool = False):
    """q (B, Q, H, hd) against k, v (B, Hkv, T, hd) -> (B, Q, H * hd)."""
    B, Q, H, _ = q.shape
    y = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, attn_mask=mask, is_causal=causal,
                                       enable_gqa=k.shape[1] != H)
    return y.transpose(1, 2).reshape(B, Q, -1)


def prefill(e, B: int, start: int, T: int) -> Ops:
    end = start + T
    kn = e.kernels
    # A bf16 cache on a CPU with bf16 dot products: the decode kernels' attention over the cache (every query of
    # the chunk against its key blocks at once) beats PyTorch's flash kernel there (docs/results.md).
    own = bf16_dots(kn, e.cache.k.dtype, e.head_dim)
    lengths = torch.full((B,), start + 1)  # query j sees the first start + 1 + j positions
    scale = 1.0 / e.head_dim ** 0.5

    def store(i, k, v):
        e.cache.write(i, k, v, start)

    def attend(i, q, k, v):
        if own:
            kc, vc = e.cache.layer(i, B)
            return kn.attend_rows(q.float().contiguous(), kc, vc, lengths, scale).reshape(B, T, -1).to(q.dtype)
        if not start:
            return _sdpa(q, k.transpose(1, 2), v.transpose(1, 2), None, causal=True)
        kc, vc = e.cache.layer(i, B)
        # A chunk after cached tokens is causal within itself and sees the whole cache.
        mask = torch.ones(T, end, dtype=torch.bool, device=e.device).tril(diagonal=start)
        return _sdpa(q, kc[:, :, :end].to(q.dtype), vc[:, :, :end].to(q.dtype), mask)

    return Ops(e.layers, e.act_dtype, torch_linear, e.cos[start:end, None], e.sin[start:end, None], store, attend,
               e.norm, last_only=True)


def _kernel_rows(linear):
    """A (rows, I) matrix kernel applied to (..., I) activations, plus the bias."""
    def apply(x, w, b=None):
        y = linear(x.reshape(-1, x.shape[-1]), w).view(*x.shape[:-1], w.shape[0])
        return y if b is None else y + b
    return apply


def decode(e, B: int, starts: list[int], Q: int) -> Ops:
    kn = e.kernels
    linear = _kernel_rows(kn.linear if kn is not None else W.linear)
    attend_rows = kn.attend_rows if kn is not None else W.attend_rows
    common = starts[0] if all(s == starts[0] for s in starts) else None
    if common is not None:
        cos, sin = e.cos32[common:common + Q, None], e.sin32[common:common + Q, None]
    else:
        pos = torch.tensor(starts)[:, None] + torch.arange(Q)
        cos, sin = e.cos32[pos][:, :, None], e.sin32[pos][:, :, None]
    lengths = torch.tensor(starts) + 1  # query j of row b sees its first starts[b] + 1 + j positions
    scale = 1.0 / e.head_dim ** 0.5

    def store(i, k, v):
        e.cache.write(i, k, v, common if common is not None else starts)

    def attend(i, q, k, v):
        kc, vc = e.cache.layer(i, B)
        # reshape: SDPA's output layout differs across torch versions, so the transposed result may not be a view
        return attend_rows(q.contiguous(), kc, vc, lengths, scale).reshape(B, Q, -1)

    if kn is None:
        return Ops(e.dec_layers, torch.float32, linear, cos, sin, store, attend, e.dec_norm)
    cos, sin = (t.view(-1, Q, t.shape[-1]) for t in (cos, sin))  # the rope kernel's (1 or B, Q, hd)
    return Ops(e.dec_layers, torch.float32, linear, cos, sin, store, attend, e.dec_norm,
               rms=kn.rms_norm, rope=kn.rope, glu=kn.silu_mul)


def static(e, pos: torch.Tensor, span: int) -> Ops:
    B, Q = pos.shape
    flat = pos.reshape(-1)
    cos = e.cos.index_select(0, flat).view(B, Q, 1, -1)
    sin = e.sin.index_select(0, flat).view(B, Q, 1, -1)
    mask = (e.positions[:span] <= pos[..., None]).unsqueeze(1)  # (B, 1, Q, span): each query's own past

    def store(i, k, v):
        e.cache.scatter(i, k, v, pos)

    def attend(i, q, k, v):
        kc, vc = e.cache.layer(i, B)
        return _sdpa(q, kc[:, :, :span], vc[:, :, :span], mask)

    return Ops(e.layers, e.act_dtype, torch_linear, cos, sin, store, attend, e.norm)
