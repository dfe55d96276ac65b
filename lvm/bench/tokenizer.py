"""The measuring of `lvm bench tokenizer` (lvm/commands/bench_tokenizer.py describes both paths and the
figures)."""

from __future__ import annotations

import statistics
import time


def reference_network(model):
    """taming modules with our weights: fp32, eager, no channels-last, the config's GroupNorm groups."""
    import contextlib
    import io

    import torch
    from taming.modules.diffusionmodules.model import Decoder, Encoder
    from taming.modules.vqvae.quantize import VectorQuantizer

    from tokenizer.networks import taming_ddconfig

    cfg = model.config
    dd = taming_ddconfig(cfg)
    ref = torch.nn.Module()
    ref.encoder = Encoder(**dd)
    with contextlib.redirect_stdout(io.StringIO()):
        ref.decoder = Decoder(**dd)
    if not cfg.mid_attention:  # the architecture being measured has none (released LVM)
        ref.encoder.mid.attn_1 = torch.nn.Identity()
        ref.decoder.mid.attn_1 = torch.nn.Identity()
    for net in (ref.encoder, ref.decoder):  # taming hard-codes 32 groups; the config may say otherwise
        for parent in list(net.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, torch.nn.GroupNorm):
                    setattr(parent, name, torch.nn.GroupNorm(cfg.norm_groups, child.num_channels, child.eps,
                                                             child.affine))
    ref.quant_conv = torch.nn.Conv2d(cfg.z_channels, cfg.embed_dim, 1)
    ref.quantize = VectorQuantizer(cfg.codebook_size, cfg.embed_dim, cfg.beta)
    ref.post_quant_conv = torch.nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    ref.load_state_dict(state, strict=True)
    return ref.to(model.device).eval()


def reference_encode(ref, x):
    import torch

    with torch.no_grad():
        z = ref.quant_conv(ref.encoder(x))
        _, _, (_, _, idx) = ref.quantize(z)
    return idx.view(x.shape[0], -1)


def reference_decode(ref, codes, grid, value_range):
    import torch

    with torch.no_grad():
        b = codes.shape[0]
        q = ref.quantize.get_codebook_entry(codes.flatten(), (b, grid, grid, ref.quantize.e_dim))
        x = ref.decoder(ref.post_quant_conv(q))
    return x.clamp(*value_range)


def place_codebook(model, seed_images):
    """Codebook on the data manifold: fp32 encoder outputs of other scenes + noise (see the docstring)."""
    import torch

    cfg = model.config
    with torch.no_grad():
        z = model.encode_latent(seed_images.to(model.device)).float()
        rows = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        pick = torch.randint(0, rows.shape[0], (cfg.codebook_size,)).to(rows.device)
        noise = torch.randn(cfg.codebook_size, rows.shape[1]).to(rows.device) * rows.std(0) * 0.3
        model.quantize.embedding.weight.copy_(rows[pick] + noise)


def bench_tokenizer(config: str = "configs/tokenizer/lvm-f16-8192.yaml", overrides: list[str] = (),
                    checkpoint: str | None = None, batch_size: int = 4, repeats: int = 3, threads: int = 0,
                    seed: int = 0, device: str = "auto", precision: str = "auto") -> int:
    """`lvm bench tokenizer`: ours in each precision of the comma list `precision` against the taming
    reference; prints the table."""
    measure_tokenizer(config=config, overrides=overrides, checkpoint=checkpoint, batch_size=batch_size,
                      repeats=repeats, threads=threads, seed=seed, device=device, precision=precision, echo=print)
    return 0


def measure_tokenizer(config: str = "configs/tokenizer/lvm-f16-8192.yaml", overrides: list[str] = (),
                      checkpoint: str | None = None, batch_size: int = 4, repeats: int = 3, threads: int = 0,
                      seed: int = 0, device: str = "auto", precision: str = "auto", echo=None) -> dict:
    """What `bench_tokenizer` measures, as a dict (images/s of each side, code agreement, PSNR); `echo`
    (e.g. print) gets the lines of its table."""
    echo = echo or (lambda *a, **k: None)
    overrides = list(overrides)
    import torch

    from lvm_base.config import load_config
    from tokenizer import VQGAN, load_tokenizer
    from lvm_base.errors import InputError
    from lvm_base.hardware import detect, parse_precisions, resolve
    from tokenizer.evaluate import psnr
    from lvm_base.image_io import pil_to_tensor
    from tokenizer.synthetic import scene
    from tokenizer.train_config import TokenizerTrainConfig

    precisions = parse_precisions(precision)
    plans = {p: resolve(device, p, "inference") for p in precisions}  # bad device: one line, exit 2
    device = plans[precisions[0]].device
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    if checkpoint:
        if overrides:
            raise InputError("key=value overrides apply to --config; a --checkpoint brings its own config")
        model = load_tokenizer(checkpoint, device=device, precision="fp32")
        source = checkpoint
    else:
        model = VQGAN(load_config(TokenizerTrainConfig, config, overrides).model).eval().to(device)
        source = f"{config}{' ' + ' '.join(overrides) if overrides else ''} (random weights)"
    cfg = model.config
    if cfg.quantizer != "l2":
        raise InputError("the taming reference path has only the plain 'l2' quantizer; use an l2 config "
                         "(e.g. add model.quantizer=l2)")
    if cfg.color_skip:
        raise InputError("the taming reference path has no colour shortcut; use a config with color_skip: false "
                         "(e.g. add model.color_skip=false)")
    lo, hi = cfg.value_range
    R = cfg.resolution

    def images(seed, n):
        return torch.stack([pil_to_tensor(scene(seed, i, R), cfg.value_range) for i in range(n)]).to(device)

    x = images(seed + 1000, batch_size)
    if not checkpoint:
        place_codebook(model, images(seed + 2000, max(2, min(8, cfg.codebook_size // model.codes_per_image))))
    ref = reference_network(model)

    echo(f"tokenizer: {source}")
    echo(f"  {R}px, f={cfg.downsample}, {model.codes_per_image} codes/image, K={cfg.codebook_size}, "
         f"norm_groups {cfg.norm_groups}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params; "
          f"batch {batch_size}, {torch.get_num_threads()} threads, {repeats} timed repeats (median)")
    echo(f"  CPU: {detect().cpu_summary()}")
    echo(f"  device {device}; reference: taming fp32 eager; ours: "
         + ", ".join(f"{p}" + (f" (-> {plans[p].precision})" if p == "auto" else "") for p in precisions))

    from lvm_base.hardware import synchronize

    sync = lambda: synchronize(device)  # noqa: E731

    def set_precision(p):
        model.config.precision = plans[p].precision

    def timed(key, fn):
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        t.setdefault(key, []).append(time.perf_counter() - t0)
        return out

    # warm-up every path (allocator, oneDNN primitive caches, the half-precision copies)
    ref_codes = reference_encode(ref, x)
    reference_decode(ref, ref_codes, model.grid, cfg.value_range)
    for p in precisions:
        set_precision(p)
        model.decode(model.encode(x))
    t: dict = {}
    ours_codes, our_rec = {}, {}
    for _ in range(repeats):
        ref_codes = timed("ref_enc", lambda: reference_encode(ref, x))
        for p in precisions:
            set_precision(p)
            ours_codes[p] = timed(("enc", p), lambda: model.encode(x))
        ref_rec = timed("ref_dec", lambda: reference_decode(ref, ref_codes, model.grid, cfg.value_range))
        for p in precisions:
            set_precision(p)
            our_rec[p] = timed(("dec", p), lambda: model.decode(ours_codes[p]))

    ips = {k: batch_size / statistics.median(v) for k, v in t.items()}
    ref01 = (ref_rec - lo) / (hi - lo)
    echo(f"  {'':18s} {'encode img/s':>12s} {'speed-up':>8s}   {'decode img/s':>12s} {'speed-up':>8s}   "
         f"{'codes agree':>11s}   PSNR vs reference (decoder alone)")
    echo(f"  {'reference fp32':18s} {ips['ref_enc']:12.3f} {'1.00x':>8s}   {ips['ref_dec']:12.3f} {'1.00x':>8s}")
    rows = {}
    for p in precisions:
        set_precision(p)
        agree = float((ours_codes[p] == ref_codes).float().mean()) * 100
        psnr_ours = psnr(((our_rec[p] - lo) / (hi - lo)).cpu(), ref01.cpu())
        psnr_dec = psnr(((model.decode(ref_codes) - lo) / (hi - lo)).cpu(), ref01.cpu())  # same codes in: decoder only
        name = f"ours {p}" + (f" = {plans[p].precision}" if p == "auto" else "")
        echo(f"  {name:18s} {ips[('enc', p)]:12.3f} {ips[('enc', p)] / ips['ref_enc']:7.2f}x   "
             f"{ips[('dec', p)]:12.3f} {ips[('dec', p)] / ips['ref_dec']:7.2f}x   {agree:10.2f}%   "
             f"{psnr_ours:.2f} dB ({psnr_dec:.2f} dB)")
        rows[p] = {"precision": plans[p].precision, "encode_img_s": ips[("enc", p)],
                   "decode_img_s": ips[("dec", p)], "encode_speedup": ips[("enc", p)] / ips["ref_enc"],
                   "decode_speedup": ips[("dec", p)] / ips["ref_dec"], "codes_agree": agree / 100,
                   "psnr_db": psnr_ours, "decoder_psnr_db": psnr_dec}
    echo(f"  ({ref_codes.numel()} codes, {ref_codes.unique().numel()} distinct in the reference's output; reference "
         f"output pixel std {float(ref01.std()):.3f}, range [{float(ref01.min()):.2f}, {float(ref01.max()):.2f}])")
    return {"source": source, "device": str(device), "batch": batch_size, "codes_per_image": model.codes_per_image,
            "reference": {"encode_img_s": ips["ref_enc"], "decode_img_s": ips["ref_dec"]}, "ours": rows}
