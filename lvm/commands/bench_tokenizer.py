"""Tokenizer speed: this package's fast path against a taming fp32 eager reference, side by side.

Both paths get the same weights and the same batch of procedurally drawn scenes, in one process, timed
interleaved (reference, ours, reference, ours, ...) so machine load hits both alike:

- reference: taming's Encoder/Decoder + taming's VectorQuantizer, fp32, eager, default memory format,
  torch.no_grad (what taming's VQModel.encode / decode_code do);
- ours: `VQGAN.encode` / `VQGAN.decode` (inference mode, channels-last, bf16 autocast for the network,
  fp32 nearest-code search).

Prints images/s for encode and decode, the speed-up ratios, the code agreement (%) and the PSNR of our
reconstruction against the reference's. Without --checkpoint the weights are random; the codebook is
then placed on encoder outputs of other scenes (plus noise), as a trained codebook is, so that codes are
diverse and near-ties happen: otherwise random codebooks collapse onto a few codes and agreement is
meaningless.

Example:
  lvm bench tokenizer --config configs/tokenizer/lvm-f16-8192.yaml --batch 4 --iters 3
"""

from __future__ import annotations

import statistics
import time


def add_arguments(p):
    p.add_argument("--config", default="configs/tokenizer/lvm-f16-8192.yaml",
                   help="tokenizer config YAML (its model: section is used)")
    p.add_argument("--checkpoint", default=None, help="load real weights instead of random ones")
    p.add_argument("--batch", type=int, default=4, help="images per batch")
    p.add_argument("--iters", type=int, default=3, help="timed repetitions (median reported)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)


def _reference(model):
    """taming modules with our weights: fp32, eager, no channels-last."""
    import contextlib
    import io

    import torch
    from taming.modules.diffusionmodules.model import Decoder, Encoder
    from taming.modules.vqvae.quantize import VectorQuantizer

    from tokenizer.model import _ddconfig

    cfg = model.config
    dd = _ddconfig(cfg)
    ref = torch.nn.Module()
    ref.encoder = Encoder(**dd)
    with contextlib.redirect_stdout(io.StringIO()):
        ref.decoder = Decoder(**dd)
    if not cfg.mid_attention:  # the architecture being measured has none (released LVM)
        ref.encoder.mid.attn_1 = torch.nn.Identity()
        ref.decoder.mid.attn_1 = torch.nn.Identity()
    ref.quant_conv = torch.nn.Conv2d(cfg.z_channels, cfg.embed_dim, 1)
    ref.quantize = VectorQuantizer(cfg.codebook_size, cfg.embed_dim, cfg.beta)
    ref.post_quant_conv = torch.nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    ref.load_state_dict(state, strict=True)
    return ref.eval()


def _ref_encode(ref, x):
    import torch

    with torch.no_grad():
        z = ref.quant_conv(ref.encoder(x))
        _, _, (_, _, idx) = ref.quantize(z)
    return idx.view(x.shape[0], -1)


def _ref_decode(ref, codes, grid, value_range):
    import torch

    with torch.no_grad():
        b = codes.shape[0]
        q = ref.quantize.get_codebook_entry(codes.flatten(), (b, grid, grid, ref.quantize.e_dim))
        x = ref.decoder(ref.post_quant_conv(q))
    return x.clamp(*value_range)


def _psnr(a, b):
    """PSNR of the whole batch as one signal (images in [0, 1])."""
    from tokenizer.evaluate import psnr_per_image

    return float(psnr_per_image(a.reshape(1, -1), b.reshape(1, -1)))


def run(args):
    import torch

    from lvm.config import load_config
    from tokenizer import VQGAN, load_tokenizer
    from tokenizer.image_io import pil_to_tensor
    from tokenizer.synthetic import scene
    from tokenizer.train_config import TokenizerTrainConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.checkpoint:
        model = load_tokenizer(args.checkpoint)
        source = args.checkpoint
    else:
        model = VQGAN(load_config(TokenizerTrainConfig, args.config).model).eval()
        source = f"{args.config} (random weights)"
    cfg = model.config
    from tokenizer.errors import InputError

    if cfg.quantizer != "l2":
        raise InputError("the taming reference path has only the plain 'l2' quantizer; use an l2 config")
    if cfg.color_skip:
        raise InputError("the taming reference path has no colour shortcut; use a config with color_skip: false")
    cfg.precision = "bf16"
    lo, hi = cfg.value_range
    R = cfg.resolution

    def images(seed, n):
        return torch.stack([pil_to_tensor(scene(seed, i, R), cfg.value_range) for i in range(n)])

    x = images(args.seed + 1000, args.batch)
    if not args.checkpoint:
        # Codebook on the data manifold: encoder outputs of other scenes + noise (see the docstring).
        with torch.no_grad():
            calib = images(args.seed + 2000, max(2, min(8, cfg.codebook_size // model.codes_per_image)))
            with torch.autocast("cpu", dtype=torch.bfloat16):
                z = model.encode_latent(calib).float()
            rows = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
            pick = torch.randint(0, rows.shape[0], (cfg.codebook_size,))
            noise = torch.randn(cfg.codebook_size, rows.shape[1]) * rows.std(0) * 0.3
            model.quantize.embedding.weight.copy_(rows[pick] + noise)
    ref = _reference(model)

    print(f"tokenizer: {source}")
    print(f"  {R}px, f={cfg.downsample}, {model.codes_per_image} codes/image, K={cfg.codebook_size}, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params; batch {args.batch}, "
          f"{torch.get_num_threads()} threads, {args.iters} timed iters (median)")

    # warm-up both paths (allocator, oneDNN primitive caches)
    ours_codes = model.encode(x)
    ref_codes = _ref_encode(ref, x)
    model.decode(ours_codes)
    _ref_decode(ref, ref_codes, model.grid, cfg.value_range)

    t = {"ref_enc": [], "our_enc": [], "ref_dec": [], "our_dec": []}

    def timed(key, fn):
        t0 = time.perf_counter()
        out = fn()
        t[key].append(time.perf_counter() - t0)
        return out

    for _ in range(args.iters):
        ref_codes = timed("ref_enc", lambda: _ref_encode(ref, x))
        ours_codes = timed("our_enc", lambda: model.encode(x))
        ref_rec = timed("ref_dec", lambda: _ref_decode(ref, ref_codes, model.grid, cfg.value_range))
        our_rec = timed("our_dec", lambda: model.decode(ours_codes))

    ips = {k: args.batch / statistics.median(v) for k, v in t.items()}
    agree = float((ours_codes == ref_codes).float().mean()) * 100
    # PSNR in [0, 1] pixel units, whatever the value range.
    psnr = _psnr((our_rec - lo) / (hi - lo), (ref_rec - lo) / (hi - lo))
    # The decoder alone (same codes in): isolates bf16 decoding error from code flips.
    our_same = model.decode(ref_codes)
    psnr_dec = _psnr((our_same - lo) / (hi - lo), (ref_rec - lo) / (hi - lo))
    ref01 = (ref_rec - lo) / (hi - lo)
    print(f"  encode  reference {ips['ref_enc']:7.3f} img/s   ours {ips['our_enc']:7.3f} img/s   "
          f"speed-up {ips['our_enc'] / ips['ref_enc']:.2f}x")
    print(f"  decode  reference {ips['ref_dec']:7.3f} img/s   ours {ips['our_dec']:7.3f} img/s   "
          f"speed-up {ips['our_dec'] / ips['ref_dec']:.2f}x")
    print(f"  code agreement: {agree:.2f}% of {ours_codes.numel()} codes "
          f"({ref_codes.unique().numel()} distinct codes in the reference's output)")
    print(f"  reconstruction PSNR ours vs reference: {psnr:.2f} dB (decoder alone, same codes: {psnr_dec:.2f} dB; "
          f"reference output pixel std {float(ref01.std()):.3f}, range [{float(ref01.min()):.2f}, "
          f"{float(ref01.max()):.2f}])")
    return 0
