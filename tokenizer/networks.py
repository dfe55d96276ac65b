"""The encoder and decoder networks: taming-transformers' Encoder/Decoder modules, built from a VQGANConfig,
with forwards that compute the same math with fewer passes (fused SiLU, in-place residuals, 1x1 convs as
matmuls, nearest-upsample + conv as one transposed conv). Parameters and state-dict keys stay taming's.
"""

from __future__ import annotations

import contextlib
import io

import torch
import torch.nn as nn
import torch.nn.functional as F


def taming_ddconfig(cfg) -> dict:
    """taming's `ddconfig` of a VQGANConfig."""
    return dict(ch=cfg.hidden_channels, out_ch=cfg.in_channels, ch_mult=cfg.channel_mult,
                num_res_blocks=cfg.num_res_blocks, attn_resolutions=list(cfg.attn_resolutions),
                dropout=cfg.dropout, resamp_with_conv=cfg.resamp_with_conv, in_channels=cfg.in_channels,
                resolution=cfg.resolution, z_channels=cfg.z_channels, double_z=False)


def build_encoder_decoder(cfg) -> tuple[nn.Module, nn.Module]:
    """taming's Encoder and Decoder for a VQGANConfig, with this module's faster modules swapped in."""
    # Only taming's module file is imported: taming.models.* would pull in pytorch_lightning.
    from taming.modules.diffusionmodules.model import Decoder, Encoder

    dd = taming_ddconfig(cfg)
    encoder = Encoder(**dd)
    with contextlib.redirect_stdout(io.StringIO()):  # taming's Decoder prints the z shape
        decoder = Decoder(**dd)
    if not cfg.mid_attention:
        encoder.mid.attn_1 = nn.Identity()
        decoder.mid.attn_1 = nn.Identity()
    for net in (encoder, decoder):
        _swap_group_norms(net, cfg.norm_groups)
    for level in decoder.up:
        if hasattr(level, "upsample"):
            level.upsample.__class__ = transposed_upsample_class()  # same parameters, same forward, fewer MACs
    return encoder, decoder


# Nearest-2x upsampling then a 3x3 conv (padding 1) is one stride-2 transposed conv with a 4x4 kernel whose
# taps are sums of the 3x3 ones, per axis: output parity 0 sees w0 at i-1 and w1+w2 at i, parity 1 sees
# w0+w1 at i and w2 at i+1. Rows of this matrix give the 4 transposed-conv taps from the 3 conv taps.
_UP_TAPS = ((0.0, 0.0, 1.0), (0.0, 1.0, 1.0), (1.0, 1.0, 0.0), (1.0, 0.0, 0.0))


def transposed_upsample_weight(w: torch.Tensor) -> torch.Tensor:
    """3x3 conv weight (Cout, Cin, 3, 3) -> the equivalent stride-2 transposed-conv weight (Cin, Cout, 4, 4)."""
    a = w.new_tensor(_UP_TAPS)
    return torch.einsum("ak,oikl,bl->ioab", a, w, a)


class _TransposedUpsampleForward:
    """taming's Upsample (nearest 2x, then conv3x3) computed as the equal transposed conv: 2.25x fewer
    multiply-adds on the decoder's largest convolutions, the same output up to fp32 rounding (~1e-5) and,
    since the kernel is a linear function of `conv.weight`, the same gradients. State-dict keys unchanged.
    """

    def forward(self, x):
        if not self.with_conv:
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        w = self.conv.weight
        if torch.is_grad_enabled() and w.requires_grad:
            wt = transposed_upsample_weight(w)  # rebuilt per call so gradients reach conv.weight
        else:
            key = (w._version, w.data_ptr(), w.dtype, w.device)
            cached = self.__dict__.get("_transposed")
            if cached is None or cached[0] != key:
                wt = transposed_upsample_weight(w.detach().float()).to(w.dtype)
                cached = (key, wt.contiguous(memory_format=torch.channels_last))
                self.__dict__["_transposed"] = cached  # a plain attribute: not in state_dict
            wt = cached[1]
        return F.conv_transpose2d(x, wt.to(x.dtype), self.conv.bias.to(x.dtype), stride=2, padding=1)


_transposed_upsample = None


def transposed_upsample_class():
    """`TransposedUpsample`: taming's Upsample with the forward above. It subclasses a taming class, so it
    is made on first use: importing this module (and tokenizer.model) needs no taming, as on a machine that
    only runs the transformer."""
    global _transposed_upsample
    if _transposed_upsample is None:
        from taming.modules.diffusionmodules.model import Upsample

        _transposed_upsample = type("TransposedUpsample", (_TransposedUpsampleForward, Upsample),
                                    {"__module__": __name__, "__doc__": _TransposedUpsampleForward.__doc__})
    return _transposed_upsample


def __getattr__(name):  # `from tokenizer.networks import TransposedUpsample` (and pickle) still find it
    if name == "TransposedUpsample":
        return transposed_upsample_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class TrainingGroupNorm(nn.GroupNorm):
    """The network's GroupNorm (config.norm_groups groups): nn.GroupNorm, with a half-precision input made
    contiguous when autograd is on.

    oneDNN's bf16 convolutions return channels-last tensors, and PyTorch's CPU GroupNorm backward on
    those is several times slower than on contiguous ones (a large share of a training step). In fp32
    the channels-last backward is about as fast as the contiguous one, so fp32 training stays channels-last
    (the faster layout for fp32 oneDNN convolutions) without copies; inference too. Same parameters, same
    state-dict keys.
    """

    def forward(self, x):
        return super().forward(x.contiguous() if torch.is_grad_enabled() and x.dtype != torch.float32 else x)


def _swap_group_norms(net: nn.Module, groups: int):
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.GroupNorm:
                new = TrainingGroupNorm(groups, child.num_channels, child.eps, child.affine)
                new.load_state_dict(child.state_dict())
                setattr(parent, name, new)


def _conv1x1(conv, x):
    # A 1x1 conv of a channels-last tensor is one matmul over its (pixels, channels) view; torch sends
    # such convs to a slower non-oneDNN kernel.
    if not x.is_contiguous(memory_format=torch.channels_last):
        return conv(x)
    return F.linear(x.permute(0, 2, 3, 1), conv.weight.flatten(1), conv.bias).permute(0, 3, 1, 2)


def _resblock(blk, x):
    # taming's ResnetBlock.forward (no timestep embedding) with fused SiLU and an in-place residual add:
    # taming's x * sigmoid(x) costs three elementwise passes forward and four backward. SiLU is in place
    # only without autograd (its backward needs its input).
    inplace = not torch.is_grad_enabled()
    h = blk.conv1(F.silu(blk.norm1(x), inplace=inplace))
    h = blk.conv2(blk.dropout(F.silu(blk.norm2(h), inplace=inplace)))
    if blk.in_channels != blk.out_channels:
        x = blk.conv_shortcut(x) if blk.use_conv_shortcut else _conv1x1(blk.nin_shortcut, x)
    return h.add_(x)


def encoder_forward(enc, x):
    """taming Encoder.forward (training and inference), same weights and same math."""
    h = enc.conv_in(x)
    for i, level in enumerate(enc.down):
        for j, blk in enumerate(level.block):
            h = _resblock(blk, h)
            if len(level.attn) > 0:
                h = level.attn[j](h)
        if i != enc.num_resolutions - 1:
            h = level.downsample(h)
    h = _resblock(enc.mid.block_2, enc.mid.attn_1(_resblock(enc.mid.block_1, h)))
    return enc.conv_out(F.silu(enc.norm_out(h), inplace=not torch.is_grad_enabled()))


def decoder_forward(dec, z):
    """taming Decoder.forward (training and inference), same weights and same math."""
    h = _resblock(dec.mid.block_2, dec.mid.attn_1(_resblock(dec.mid.block_1, dec.conv_in(z))))
    for i in reversed(range(dec.num_resolutions)):
        level = dec.up[i]
        for j, blk in enumerate(level.block):
            h = _resblock(blk, h)
            if len(level.attn) > 0:
                h = level.attn[j](h)
        if i != 0:
            h = level.upsample(h)
    return dec.conv_out(F.silu(dec.norm_out(h), inplace=not torch.is_grad_enabled()))
