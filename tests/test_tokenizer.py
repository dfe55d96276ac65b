"""Tokenizer model and checkpoint loaders, checked against a plain functional re-implementation."""

import dataclasses
import json
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tokenizer import InputError, VQGAN, VQGANConfig, load_tokenizer


# ---------- an independent, plain functional VQGAN encoder (taming's forward, written out) ----------

GROUPS = 32  # taming's GroupNorm groups; test_norm_groups changes it for one call


def _gn(x, sd, p):
    return F.group_norm(x, GROUPS, sd[p + ".weight"], sd[p + ".bias"], eps=1e-6)


def _conv(x, sd, p, stride=1, padding=1):
    return F.conv2d(x, sd[p + ".weight"], sd[p + ".bias"], stride=stride, padding=padding)


def _swish(x):
    return x * torch.sigmoid(x)


def _resblock(x, sd, p):
    h = _conv(_swish(_gn(x, sd, p + ".norm1")), sd, p + ".conv1")
    h = _conv(_swish(_gn(h, sd, p + ".norm2")), sd, p + ".conv2")
    if p + ".nin_shortcut.weight" in sd:
        x = _conv(x, sd, p + ".nin_shortcut", padding=0)
    return x + h


def _attn(x, sd, p):
    h = _gn(x, sd, p + ".norm")
    q, k, v = (_conv(h, sd, f"{p}.{n}", padding=0) for n in "qkv")
    b, c, hh, ww = q.shape
    q, k, v = (t.reshape(b, c, hh * ww) for t in (q, k, v))
    w = torch.softmax(torch.einsum("bci,bcj->bij", q, k) * c ** -0.5, dim=2)
    o = torch.einsum("bcj,bij->bci", v, w).reshape(b, c, hh, ww)
    return x + _conv(o, sd, p + ".proj_out", padding=0)


def reference_encode(sd, x, n_levels, n_blocks, attn_levels=()):
    """Pixels -> codes with nothing but the state dict: conv_in, down levels, mid, out, quant_conv, argmin."""
    h = _conv(x, sd, "encoder.conv_in")
    for i in range(n_levels):
        for j in range(n_blocks):
            h = _resblock(h, sd, f"encoder.down.{i}.block.{j}")
            if i in attn_levels:
                h = _attn(h, sd, f"encoder.down.{i}.attn.{j}")
        if i != n_levels - 1:
            h = _conv(F.pad(h, (0, 1, 0, 1)), sd, f"encoder.down.{i}.downsample.conv", stride=2, padding=0)
    h = _resblock(h, sd, "encoder.mid.block_1")
    if "encoder.mid.attn_1.q.weight" in sd:
        h = _attn(h, sd, "encoder.mid.attn_1")
    h = _resblock(h, sd, "encoder.mid.block_2")
    h = _conv(_swish(_gn(h, sd, "encoder.norm_out")), sd, "encoder.conv_out")
    if "color_in.weight" in sd:  # the patch-colour shortcut: each patch's mean colour, 1x1 conv, added
        h = h + _conv(F.avg_pool2d(x, 2 ** (n_levels - 1)), sd, "color_in", padding=0)
    z = _conv(h, sd, "quant_conv", padding=0)
    b, c, hh, ww = z.shape
    z = z.permute(0, 2, 3, 1).reshape(-1, c)
    e = sd["quantize.embedding.weight"]
    d = (z ** 2).sum(1, keepdim=True) + (e ** 2).sum(1) - 2 * z @ e.t()
    return d.argmin(1).view(b, hh * ww)


# ---------- random checkpoints in the released formats, made here ----------

def _random_state(cfg: VQGANConfig, seed: int, mid_attn: bool) -> dict:
    """A state dict in taming's key layout built from taming's own modules (not our VQGAN class)."""
    import contextlib
    import io

    from taming.modules.diffusionmodules.model import Decoder, Encoder

    torch.manual_seed(seed)
    dd = dict(ch=cfg.hidden_channels, out_ch=3, ch_mult=cfg.channel_mult, num_res_blocks=cfg.num_res_blocks,
              attn_resolutions=list(cfg.attn_resolutions), in_channels=3, resolution=cfg.resolution,
              z_channels=cfg.z_channels, double_z=False)
    with contextlib.redirect_stdout(io.StringIO()):
        enc, dec = Encoder(**dd), Decoder(**dd)
    sd = {f"encoder.{k}": v for k, v in enc.state_dict().items()}
    sd.update({f"decoder.{k}": v for k, v in dec.state_dict().items()})
    if not mid_attn:
        sd = {k: v for k, v in sd.items() if ".mid.attn_1." not in k}
    # Make the random network less degenerate: non-trivial norms so codes spread over the codebook.
    g = torch.Generator().manual_seed(seed + 1)
    for k, v in sd.items():
        if k.endswith("norm1.weight") or k.endswith("norm2.weight") or k.endswith("norm_out.weight"):
            sd[k] = 1 + 0.2 * torch.randn(v.shape, generator=g)
    sd["quant_conv.weight"] = torch.randn(cfg.embed_dim, cfg.z_channels, 1, 1, generator=g) * 0.3
    sd["quant_conv.bias"] = torch.zeros(cfg.embed_dim)
    sd["post_quant_conv.weight"] = torch.randn(cfg.z_channels, cfg.embed_dim, 1, 1, generator=g) * 0.3
    sd["post_quant_conv.bias"] = torch.zeros(cfg.z_channels)
    sd["quantize.embedding.weight"] = torch.randn(cfg.codebook_size, cfg.embed_dim, generator=g) * 0.5
    return sd


def _images(n, res, seed=0):
    """Smooth, image-like inputs in [0, 1] (gradients + blobs), not white noise."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, res), torch.linspace(0, 1, res), indexing="ij")
    out = []
    for _ in range(n):
        a = torch.rand(3, 3, generator=g)
        img = a[:, 0, None, None] * xx + a[:, 1, None, None] * yy + 0.3 * a[:, 2, None, None]
        cx, cy, r = torch.rand(3, generator=g)
        img = img + 0.5 * (((xx - cx) ** 2 + (yy - cy) ** 2) < (0.1 + 0.2 * r) ** 2).float()
        out.append(img.clamp(0, 1))
    return torch.stack(out)


MUSE_CFG = dict(resolution=64, num_channels=3, hidden_channels=32, channel_mult=[1, 2, 2], num_res_blocks=1,
                attn_resolutions=[], no_attn_mid_block=True, z_channels=16, quantized_embed_dim=8,
                num_embeddings=512, commitment_cost=0.25, dropout=0.0, resample_with_conv=True,
                _class_name="VQGANModel")


def test_released_lvm_layout_round_trip(tmp_path):
    cfg = VQGANConfig(resolution=64, hidden_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1,
                      attn_resolutions=(), z_channels=16, embed_dim=8, codebook_size=512)
    sd = _random_state(cfg, seed=0, mid_attn=False)
    d = tmp_path / "lvm_tok"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(MUSE_CFG))
    torch.save(sd, d / "pytorch_model.bin")
    tok = load_tokenizer(d, precision="fp32")
    assert tok.value_range == (0.0, 1.0) and tok.resize_mode == "squash" and tok.codes_per_image == 256
    assert not any("mid.attn_1" in k for k in tok.state_dict())
    x = _images(4, 64)
    ours = tok.encode(x)
    ref = reference_encode(sd, x, n_levels=3, n_blocks=1)
    assert ours.shape == (4, 256) and ours.dtype == torch.long
    assert ours.unique().numel() > 20  # the comparison means something only if codes vary
    assert torch.equal(ours, ref)  # 100% agreement in fp32
    y = tok.decode(ours)
    assert y.shape == (4, 3, 64, 64) and y.min() >= 0 and y.max() <= 1


def test_taming_ckpt_round_trip(tmp_path):
    cfg = VQGANConfig(resolution=64, hidden_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1,
                      attn_resolutions=(32,), z_channels=16, embed_dim=8, codebook_size=256)
    sd = _random_state(cfg, seed=3, mid_attn=True)
    ckpt_sd = dict(sd)
    ckpt_sd["loss.discriminator.main.0.weight"] = torch.randn(4, 3, 4, 4)  # ignored by inference
    ckpt_sd["loss.perceptual_loss.lin0.model.1.weight"] = torch.randn(1, 64, 1, 1)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "configs").mkdir()
    torch.save({"state_dict": ckpt_sd, "global_step": 7, "epoch": 1}, tmp_path / "checkpoints" / "last.ckpt")
    (tmp_path / "configs" / "model-project.yaml").write_text(f"""
model:
  base_learning_rate: 4.5e-06
  target: taming.models.vqgan.VQModel
  params:
    embed_dim: 8
    n_embed: 256
    ddconfig:
      double_z: false
      z_channels: 16
      resolution: 64
      in_channels: 3
      out_ch: 3
      ch: 32
      ch_mult: [1, 2, 2]
      num_res_blocks: 1
      attn_resolutions: [32]
      dropout: 0.0
    lossconfig:
      target: taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator
""")
    for path in (tmp_path, tmp_path / "checkpoints" / "last.ckpt"):
        tok = load_tokenizer(path, precision="fp32")
        assert tok.value_range == (-1.0, 1.0)
        x = _images(3, 64, seed=1) * 2 - 1
        ours = tok.encode(x)
        ref = reference_encode(sd, x, n_levels=3, n_blocks=1, attn_levels=(1,))
        assert ours.unique().numel() > 20
        assert torch.equal(ours, ref)


def test_key_mismatch_lists_keys(tmp_path):
    cfg = VQGANConfig(resolution=64, hidden_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1,
                      attn_resolutions=(), z_channels=16, embed_dim=8, codebook_size=512)
    sd = _random_state(cfg, seed=0, mid_attn=True)  # has mid.attn_1, which the released layout lacks
    del sd["decoder.conv_out.bias"]
    d = tmp_path / "bad"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(MUSE_CFG))
    torch.save(sd, d / "pytorch_model.bin")
    with pytest.raises(InputError) as e:
        load_tokenizer(d)
    msg = str(e.value)
    assert "missing keys: decoder.conv_out.bias" in msg
    assert "unexpected keys:" in msg and "encoder.mid.attn_1.q.weight" in msg


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(InputError, match="not a tokenizer checkpoint"):
        load_tokenizer(tmp_path)
    with pytest.raises(InputError, match="no such"):
        load_tokenizer(tmp_path / "nope")


def test_weights_only_refuses_pickled_objects(tmp_path):
    d = tmp_path / "evil"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(MUSE_CFG))
    import argparse

    torch.save({"x": argparse.Namespace(a=1)}, d / "pytorch_model.bin")  # not a plain tensor dict
    with pytest.raises(InputError, match="cannot load checkpoint safely"):
        load_tokenizer(d)


def _tiny(quantizer="l2", **kw):
    base = dict(resolution=32, hidden_channels=32, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
                mid_attention=False, z_channels=8, embed_dim=8, codebook_size=64, quantizer=quantizer)
    return VQGANConfig(**{**base, **kw})


@pytest.mark.parametrize("quantizer", ["l2", "normed"])
def test_own_format_round_trip_and_api(tmp_path, quantizer):
    torch.manual_seed(0)
    tok = VQGAN(_tiny(quantizer))
    assert tok.codebook_size == 64 and tok.resolution == 32 and tok.codes_per_image == 256
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    codes = tok.encode(x)
    tok.save_pretrained(tmp_path / "tok")
    # huggingface_hub's mixin adds a model card beside our two files
    assert sorted(p.name for p in (tmp_path / "tok").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert "library_name: lvm" in (tmp_path / "tok" / "README.md").read_text()
    assert json.loads((tmp_path / "tok" / "config.json").read_text())["format"] == "lvm-vqgan"
    back = load_tokenizer(tmp_path / "tok")
    assert back.config == tok.config
    again = VQGAN.from_pretrained(tmp_path / "tok", precision="fp32")  # the mixin's entry point, same loader
    assert again.config == dataclasses.replace(tok.config, precision="fp32")
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), tok.state_dict().values()))
    assert torch.equal(back.encode(x), codes)
    assert torch.allclose(back.decode(codes), tok.decode(codes))
    # images in, PIL out
    imgs = [Image.fromarray(np.full((40, 50, 3), 30 * i, np.uint8)) for i in range(3)]
    c2 = back.encode_images(imgs, batch_size=2)
    assert c2.shape == (3, 256)
    pil = back.decode_to_pil(c2)
    assert len(pil) == 3 and pil[0].size == (32, 32)
    with pytest.raises(InputError):
        back.decode(torch.full((1, 256), 64))
    with pytest.raises(InputError):
        back.encode(torch.zeros(1, 3, 16, 16))


def test_norm_groups(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="norm_groups"):
        _tiny(norm_groups=5)
    with pytest.raises(ValueError, match="num_res_blocks"):
        _tiny(num_res_blocks=0)
    torch.manual_seed(0)
    tok = VQGAN(_tiny(norm_groups=1)).eval()
    norms = [m for m in tok.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and all(m.num_groups == 1 for m in norms)
    assert set(tok.state_dict()) == set(VQGAN(_tiny()).state_dict())  # same keys as taming's layout
    # The plain re-implementation with one group gives the same codes (fp32 path).
    monkeypatch.setattr(sys.modules[__name__], "GROUPS", 1)
    tok.config.precision = "fp32"
    x = _images(3, 32) * 2 - 1
    sd = {k: v.float() for k, v in tok.state_dict().items()}
    assert torch.equal(tok.encode(x), reference_encode(sd, x, 2, 1))
    tok.save_pretrained(tmp_path / "tok")
    assert load_tokenizer(tmp_path / "tok").config.norm_groups == 1


def test_color_skip(tmp_path):
    torch.manual_seed(0)
    tok = VQGAN(_tiny("l2", color_skip=True)).eval()
    with torch.no_grad():
        tok.quantize.embedding.weight.normal_(0, 0.5)
    extra = set(tok.state_dict()) - set(VQGAN(_tiny("l2")).state_dict())
    assert extra == {"color_in.weight", "color_in.bias", "color_out.weight", "color_out.bias"}
    x = _images(3, 32) * 2 - 1
    fast = tok.encode(x)
    tok.config.precision = "fp32"
    codes = tok.encode(x)
    assert (fast == codes).float().mean() > 0.9  # the bf16 copies carry the shortcut too
    sd = {k: v.float() for k, v in tok.state_dict().items()}
    assert torch.equal(codes, reference_encode(sd, x, 2, 1))
    # decoding: the inference path equals the training path, and that is taming's decoder plus the
    # per-patch colour (nearest-upsampled 1x1 conv of the latent)
    with torch.no_grad():
        q = tok.quantize.lookup(codes.flatten().clone()).view(3, 16, 16, 8).permute(0, 3, 1, 2)
        h = tok.post_quant_conv(q)
        want = tok.decoder(h) + F.interpolate(tok.color_out(h), scale_factor=2, mode="nearest")
        assert torch.allclose(tok.decode_latent(q), want, atol=1e-5)  # fused SiLU: fp32 rounding apart
    assert torch.allclose(tok.decode(codes), want.clamp(-1, 1), atol=1e-5)
    tok.save_pretrained(tmp_path / "tok")
    back = load_tokenizer(tmp_path / "tok", precision="fp32")  # as the codes were made: loads ignore the stored one
    assert back.config.color_skip and torch.equal(back.encode(x), codes)


def test_training_forward_and_commitment_direction():
    torch.manual_seed(0)
    tok = VQGAN(_tiny("l2"))
    z = torch.randn(10, 8, requires_grad=True)
    e = tok.quantize.embedding.weight
    _, loss, idx = tok.quantize(z)
    loss.backward()
    q = e[idx].detach()
    # d loss / d z = beta * 2 (z - q) / numel: the encoder gets only the beta-weighted commitment term.
    assert torch.allclose(z.grad, 0.25 * 2 * (z.detach() - q) / z.numel(), atol=1e-6)
    # and the codebook gets the full-weight codebook term
    g = torch.zeros_like(e)
    g.index_add_(0, idx, 2 * (q - z.detach()) / z.numel())
    assert torch.allclose(e.grad, g, atol=1e-6)


def test_bf16_fast_path_agrees_with_fp32():
    torch.manual_seed(0)
    cfg = _tiny("l2")
    tok = VQGAN(cfg).eval()
    with torch.no_grad():
        tok.quantize.embedding.weight.normal_(0, 0.5)
    x = _images(4, 32) * 2 - 1
    fast = tok.encode(x)
    tok.config.precision = "fp32"
    exact = tok.encode(x)
    assert (fast == exact).float().mean() > 0.9


def test_import_is_light():
    import subprocess

    code = ("import sys, tokenizer; tokenizer.VQGANConfig; "
            "assert not any('lightning' in m for m in sys.modules), 'lightning imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
