"""The engine's copy of a LLaMA layer (fused QKV and gate/up matrices, optionally taking over the model's
tensors) and the PyTorch twins of the CPU decode kernels."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lvm_base.errors import InputError


def decode_weight(w: torch.Tensor) -> torch.Tensor:
    """What the CPU's one-token decoding uses of `w`: vectors (norm weights) in fp32, matrices as they are."""
    return w.float() if w.ndim == 1 else w


def linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x @ w.T in x's dtype, whatever dtype w is kept in."""
    return F.linear(x, w) if w.dtype == x.dtype else F.linear(x.to(w.dtype), w).to(x.dtype)


def attend_rows(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: torch.Tensor, scale: float) -> torch.Tensor:
    """PyTorch twin of the `attend_rows` kernel: q (B, Q, H, hd), query j of row b over the first
    lengths[b] + j cached positions -> (B, Q, H, hd)."""
    B, Q, H, _ = q.shape
    ls = lengths.tolist()
    T = max(ls) + Q - 1
    mask = None
    if Q > 1 or min(ls) != max(ls):
        pos = lengths[:, None] - 1 + torch.arange(Q)  # each query's own position
        mask = (torch.arange(T) <= pos[..., None]).unsqueeze(1).to(q.device)  # (B, 1, Q, T)
    y = F.scaled_dot_product_attention(q.transpose(1, 2), k[:, :, :T], v[:, :, :T], attn_mask=mask, scale=scale,
                                       enable_gqa=k.shape[1] != H)
    return y.transpose(1, 2)


def hand_over(lins, fused: torch.Tensor) -> None:
    """Make the model's unfused weights views of the fused matrix (the model keeps working and nothing is held
    twice), or free them where the engine's copy has another dtype or device."""
    row = 0
    for lin in lins:
        n = lin.weight.shape[0]
        if lin.weight.dtype == fused.dtype and lin.weight.device == fused.device:
            lin.weight.data = fused[row:row + n]
        else:
            lin.weight.data = torch.empty(0, dtype=lin.weight.dtype, device=lin.weight.device)
        row += n


def layer_weights(layer, dtype, device, consume: bool = False):
    at, mlp = layer.self_attn, layer.mlp
    for lin in (mlp.gate_proj, mlp.up_proj, mlp.down_proj):
        if getattr(lin, "bias", None) is not None:
            raise InputError("MLP biases are not supported (LLaMA has none)")
    # Same dtype and device: no copy, the engine shares the model's tensor.
    cast = lambda t: t.detach().to(device=device, dtype=dtype).contiguous()  # noqa: E731
    fuse = lambda lins: torch.cat([cast(lin.weight) for lin in lins])  # noqa: E731
    qkv, gate_up = (at.q_proj, at.k_proj, at.v_proj), (mlp.gate_proj, mlp.up_proj)
    w = dict(
        attn_norm=cast(layer.input_layernorm.weight),
        wqkv=fuse(qkv),
        wo=cast(at.o_proj.weight),
        mlp_norm=cast(layer.post_attention_layernorm.weight),
        w13=fuse(gate_up),
        w2=cast(mlp.down_proj.weight),
    )
    if at.q_proj.bias is not None:  # HF Llama's attention_bias (grid heads, lvm.model)
        w["bqkv"] = cast(torch.cat([at.q_proj.bias, at.k_proj.bias, at.v_proj.bias]))
        w["bo"] = cast(at.o_proj.bias)
    if consume:  # loading a big model never holds its weights twice
        hand_over(qkv, w["wqkv"])
        hand_over(gate_up, w["w13"])
    return w
