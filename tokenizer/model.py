"""The VQGAN tokenizer: taming-transformers' Encoder/Decoder around a vector quantizer.

    tok = VQGAN(VQGANConfig(resolution=128, channel_mult=(1, 1, 2, 4), codebook_size=8192))
    codes = tok.encode(x)          # x: float (B, 3, R, R) in tok.value_range -> long (B, 256)
    x_hat = tok.decode(codes)      # -> float (B, 3, R, R) in tok.value_range (clamped)

State-dict keys are taming's (`encoder.down.0.block.0.norm1.weight`, `quant_conv`, `quantize.embedding.weight`,
`post_quant_conv`, `decoder.up.3.upsample.conv`, ...), so taming checkpoints and the released LVM (MUSE
layout) weights load without renaming. With `mid_attention=False` the middle attention blocks are
replaced by identities, which is how the released LVM tokenizer is built (it has no `mid.attn_1` keys).

Inference (`encode`/`decode`) is the fast path: inference mode, channels-last memory, and the precision
that `config.precision` resolves to through `lvm_base.hardware.resolve` on the model's device ("auto":
bf16 where the hardware computes it natively, fp32 elsewhere, e.g. on AVX2-only CPUs). The nearest-code
search always runs in fp32 so half-precision rounding cannot flip codes on near-ties.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin

from lvm_base.errors import InputError
from lvm_base.validate import FINITE, POSITIVE, Rule, at_least, between, checks, each
from .networks import build_encoder_decoder, decoder_forward, encoder_forward
from .quantize import build_quantizer

FORMAT = "lvm-vqgan"


_BOOL = Rule("true or false", lambda v: isinstance(v, bool))
_SIZES = Rule("a non-empty list of integers >= 1", lambda v: isinstance(v, (list, tuple)) and v and each(POSITIVE)(v))
_RANGE = Rule("[low, high] with low < high",
              lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and each(FINITE)(v) and v[0] < v[1])


# Configs come from users' JSON/YAML: a wrong type or a size below 1 is named here rather than surfacing inside
# torch (a negative tensor dimension, a division by zero); num_res_blocks too (taming's encoder has no path
# without a block).
@dataclass
@checks(**dict.fromkeys(("resolution", "in_channels", "hidden_channels", "num_res_blocks", "z_channels", "embed_dim",
                         "codebook_size", "code_dim", "norm_groups"), POSITIVE),
        **dict.fromkeys(("mid_attention", "resamp_with_conv", "color_skip"), _BOOL),
        channel_mult=_SIZES, attn_resolutions=each(POSITIVE), beta=at_least(0.0),
        dropout=between(0.0, 1.0, open_hi=True), value_range=_RANGE)
class VQGANConfig:
    resolution: int = 256
    in_channels: int = 3
    hidden_channels: int = 128          # taming's `ch`
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2             # the decoder uses num_res_blocks + 1 per level, as taming does
    attn_resolutions: tuple[int, ...] = (16,)
    mid_attention: bool = True          # False for the released LVM tokenizer
    z_channels: int = 256
    embed_dim: int = 256                # channels after quant_conv = code vector size of the "l2" quantizer
    codebook_size: int = 1024
    quantizer: Literal["l2", "normed"] = "l2"
    code_dim: int = 8                   # lookup space of the "normed" quantizer
    beta: float = 0.25                  # commitment weight
    dropout: float = 0.0
    resamp_with_conv: bool = True
    value_range: tuple[float, float] = (-1.0, 1.0)   # pixels the network eats and emits
    resize_mode: Literal["crop", "squash"] = "crop"  # how encode_images makes squares ("squash" = released LVM)
    # Inference precision: auto (the hardware policy, lvm_base.hardware.resolve), fp32, bf16 or fp16.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # GroupNorm groups (taming: 32). Each group loses its own mean and scale per image, so with few channels
    # per group (32 groups over 32-128 channels is near instance norm) absolute colors are normalised away
    # and a small tokenizer comes out nearly colour-blind; small models want fewer groups.
    norm_groups: int = 32
    # Patch-colour shortcut (ours, off for taming/released weights): each f x f patch's mean colour enters
    # the latent through a 1x1 conv, and a 1x1 conv of the latent adds a per-patch colour back to the
    # output. The deep encoder/decoder of a small tokenizer learns to carry colour very slowly: early in
    # training objects come back gray and segmentation answers lose their label colours; with the shortcut
    # they keep their colours from the start, at no cost in RGB PSNR (docs/results.md). Adds keys
    # color_in.* and color_out.*.
    color_skip: bool = False

    def __post_init__(self):
        # the field table (@checks) has run: the types and ranges below hold
        self.channel_mult, self.attn_resolutions = tuple(self.channel_mult), tuple(self.attn_resolutions)
        self.value_range = tuple(float(v) for v in self.value_range)
        f = 2 ** (len(self.channel_mult) - 1)
        if self.resolution % f:
            raise ValueError(f"resolution {self.resolution} is not divisible by the downsampling factor {f}")
        if self.hidden_channels % 32:
            raise ValueError("hidden_channels must be a multiple of 32 (taming builds GroupNorms of 32 groups)")
        if self.hidden_channels % self.norm_groups:
            raise ValueError(f"norm_groups {self.norm_groups} must divide hidden_channels {self.hidden_channels}")
        if self.quantizer not in ("l2", "normed"):
            raise ValueError(f"quantizer must be 'l2' or 'normed', got {self.quantizer!r}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be auto, fp32, bf16 or fp16, got {self.precision!r}")
        if self.resize_mode not in ("crop", "squash"):
            raise ValueError(f"resize_mode must be 'crop' or 'squash', got {self.resize_mode!r}")

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    @property
    def grid(self) -> int:
        return self.resolution // self.downsample

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "VQGANConfig":
        if not isinstance(d, dict):
            raise InputError(f"a tokenizer config is a JSON object, got a {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise InputError(f"unknown VQGANConfig keys: {', '.join(unknown)}")
        return cls(**d)


class VQGAN(nn.Module, PyTorchModelHubMixin, library_name="lvm", tags=["vqgan", "image-tokenizer"]):
    def __init__(self, config: VQGANConfig):
        super().__init__()
        self.config = config
        self.encoder, self.decoder = build_encoder_decoder(config)
        self.quant_conv = nn.Conv2d(config.z_channels, config.embed_dim, 1)
        self.quantize = build_quantizer(config.quantizer, config.codebook_size, config.embed_dim,
                                        config.code_dim, config.beta)
        self.post_quant_conv = nn.Conv2d(config.embed_dim, config.z_channels, 1)
        if config.color_skip:
            self.color_in = nn.Conv2d(config.in_channels, config.z_channels, 1)
            self.color_out = nn.Conv2d(config.z_channels, config.in_channels, 1)
        else:
            self.color_in = self.color_out = None
        self._channels_last = False

    # ---- the facts other packages read ----
    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def resolution(self) -> int:
        return self.config.resolution

    @property
    def grid(self) -> int:
        return self.config.grid

    @property
    def codes_per_image(self) -> int:
        return self.config.grid ** 2

    @property
    def value_range(self) -> tuple[float, float]:
        return self.config.value_range

    @property
    def resize_mode(self) -> str:
        return self.config.resize_mode

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ---- training forward ----
    def encode_latent(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels -> pre-quantization latent (B, embed_dim, h, w)."""
        return self.quant_conv(self._features(self.encoder, self.color_in, x))

    def decode_latent(self, q: torch.Tensor) -> torch.Tensor:
        return self._pixels(self.decoder, self.color_out, self.post_quant_conv(q))

    # The two halves around the quantizer, given the modules to use (the model's own for training and fp32
    # inference, the cached half-precision copies otherwise): taming's encoder/decoder plus the optional
    # colour shortcut.
    def _features(self, enc, color_in, x) -> torch.Tensor:
        h = encoder_forward(enc, x)
        if color_in is not None:
            h = h + color_in(F.avg_pool2d(x, self.config.downsample))
        return h

    def _pixels(self, dec, color_out, h) -> torch.Tensor:
        x = decoder_forward(dec, h)
        if color_out is not None:
            x = x + F.interpolate(color_out(h), scale_factor=self.config.downsample, mode="nearest")
        return x

    def _to_rows(self, z: torch.Tensor) -> torch.Tensor:
        return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])

    def _from_rows(self, rows: torch.Tensor, b: int, h: int, w: int) -> torch.Tensor:
        return rows.reshape(b, h, w, -1).permute(0, 3, 1, 2)

    def use_channels_last(self, on: bool = True) -> "VQGAN":
        """Keep parameters (and, in `forward`, the input) channels-last: the faster layout of fp32 oneDNN
        convolutions (an fp32 training step on AVX2 a few percent faster); bf16 training is faster contiguous."""
        self.to(memory_format=torch.channels_last if on else torch.contiguous_format)
        self._channels_last = on
        return self

    def forward(self, x: torch.Tensor):
        """Training pass: returns (reconstruction, quantizer loss, codes (B, h*w))."""
        if self._channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        z = self.encode_latent(x)
        b, _, h, w = z.shape
        q, qloss, idx = self.quantize(self._to_rows(z))
        xrec = self.decode_latent(self._from_rows(q, b, h, w).to(z.dtype))
        return xrec, qloss, idx.view(b, h * w)

    # ---- inference: the fast path ----
    def inference_plan(self):
        """What `encode`/`decode` compute in: config.precision resolved by the policy on the model's device."""
        from lvm_base.hardware import resolve

        dev = self.device
        name = dev.type if dev.index is None else f"{dev.type}:{dev.index}"
        return resolve(name, self.config.precision, "inference")

    def _fast_modules(self):
        """(encoder, quant_conv, post_quant_conv, decoder, color_in, color_out, plan) for inference.

        fp32: the model itself, channels-last. bf16/fp16: a cached channels-last copy of the network in
        that dtype (rebuilt when any parameter changes), so no weight is re-cast per call and
        GroupNorm/SiLU run on half the bytes; fp16 copies keep their GroupNorms in fp32, where fp16
        statistics could overflow (the autocast region feeds them).
        """
        plan = self.inference_plan()
        if plan.precision == "fp32":
            if not self._channels_last:
                self.use_channels_last()
            return (self.encoder, self.quant_conv, self.post_quant_conv, self.decoder, self.color_in,
                    self.color_out, plan)
        key = (plan.precision, str(self.device), tuple(p._version for p in self.parameters()),
               tuple(p.data_ptr() for p in self.parameters()))
        cache = self.__dict__.get("_half_cache")
        if cache is None or cache[0] != key:
            import copy

            def half(m):
                m = copy.deepcopy(m).to(dtype=plan.dtype, memory_format=torch.channels_last).eval()
                if plan.precision == "fp16":
                    for g in m.modules():
                        if isinstance(g, nn.GroupNorm):
                            g.float()
                return m

            mods = tuple(None if m is None else half(m) for m in (self.encoder, self.quant_conv,
                                                                   self.post_quant_conv, self.decoder,
                                                                   self.color_in, self.color_out))
            cache = (key, mods)
            self.__dict__["_half_cache"] = cache  # not a submodule: stays out of state_dict/parameters
        return (*cache[1], plan)

    def _check_pixels(self, x: torch.Tensor):
        if x.ndim != 4 or x.shape[1] != self.config.in_channels or x.shape[2] != self.resolution \
                or x.shape[3] != self.resolution:
            raise InputError(f"encode expects images of shape (B, {self.config.in_channels}, {self.resolution}, "
                             f"{self.resolution}), got {tuple(x.shape)}")

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, R, R) in `value_range` -> codes long (B, codes_per_image), row-major over the grid."""
        self._check_pixels(x)
        enc, qc, _, _, cin, _, plan = self._fast_modules()  # outside inference mode: it may copy parameters
        with torch.inference_mode(), plan.autocast():
            x = x.to(self.device, plan.dtype).contiguous(memory_format=torch.channels_last)
            z = qc(self._features(enc, cin, x)).float()
            b, _, h, w = z.shape
            return self.quantize.codes(self._to_rows(z)).view(b, h * w)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B, codes_per_image) -> images float32 (B, 3, R, R) clamped to `value_range`."""
        codes = torch.as_tensor(codes, device=self.device).long()
        if codes.ndim == 1:
            codes = codes[None]
        n = self.codes_per_image
        if codes.ndim != 2 or codes.shape[1] != n:
            raise InputError(f"decode expects codes of shape (B, {n}), got {tuple(codes.shape)}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise InputError(f"codes must lie in [0, {self.codebook_size - 1}], got "
                             f"[{int(codes.min())}, {int(codes.max())}]")
        _, _, pqc, dec, _, cout, plan = self._fast_modules()
        with torch.inference_mode(), plan.autocast():
            b, g = codes.shape[0], self.grid
            q = self.quantize.lookup(codes.flatten()).float()
            q = self._from_rows(q, b, g, g).to(plan.dtype).contiguous(memory_format=torch.channels_last)
            x = self._pixels(dec, cout, pqc(q))
            lo, hi = self.value_range
            return x.float().clamp(lo, hi).contiguous()

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    # ---- images in and out ----
    def encode_images(self, images: Sequence, batch_size: int = 16, progress: bool = False) -> torch.Tensor:
        """Paths or PIL images -> codes long (N, codes_per_image) on the CPU."""
        from lvm_base.image_io import load_image, pil_to_tensor, resize_square

        def load(item):
            img = item if hasattr(item, "convert") else load_image(item)
            return pil_to_tensor(resize_square(img.convert("RGB"), self.resolution, self.resize_mode),
                                 self.value_range)

        out = []
        starts = range(0, len(images), batch_size)
        if progress:
            from tqdm import tqdm
            starts = tqdm(starts, desc="encode", unit="batch")
        for i in starts:
            x = torch.stack([load(it) for it in images[i:i + batch_size]])
            out.append(self.encode(x).cpu())
        return torch.cat(out) if out else torch.zeros(0, self.codes_per_image, dtype=torch.long)

    def decode_to_pil(self, codes, batch_size: int = 16) -> list:
        from lvm_base.image_io import tensor_to_pil

        codes = torch.as_tensor(codes).long()
        if codes.ndim == 1:
            codes = codes[None]
        out = []
        for i in range(0, codes.shape[0], batch_size):
            out.extend(tensor_to_pil(x, self.value_range) for x in self.decode(codes[i:i + batch_size]).cpu())
        return out

    # ---- our checkpoint format (huggingface_hub's mixin adds hub ids, push_to_hub and a model card) ----
    def _save_pretrained(self, save_directory: Path) -> None:
        self.write_checkpoint(save_directory)

    def write_checkpoint(self, save_directory, dtype=None) -> None:
        """`config.json` (with the format tag that `load_tokenizer` detects) + `model.safetensors`, each
        written atomically so a reader never sees half a checkpoint; `dtype` (a torch dtype): the floating
        weights stored in it (`load_tokenizer` casts them to the precision it computes in)."""
        from safetensors.torch import save_file

        from lvm_base.files import atomic_path, atomic_write_text

        state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu().contiguous()
                 for k, v in self.state_dict().items()}
        with atomic_path(Path(save_directory) / "model.safetensors") as tmp:
            save_file(state, str(tmp), metadata={"format": FORMAT})
        atomic_write_text(Path(save_directory) / "config.json",
                          json.dumps({"format": FORMAT, **self.config.to_dict()}, indent=2) + "\n")

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision=None, cache_dir=None, force_download: bool = False,
                         local_files_only: bool = False, token=None, config=None, **overrides) -> "VQGAN":
        directory = Path(model_id)
        if not directory.is_dir():
            from huggingface_hub import snapshot_download

            directory = Path(snapshot_download(model_id, revision=revision, cache_dir=cache_dir, token=token,
                                               force_download=force_download, local_files_only=local_files_only,
                                               allow_patterns=["config.json", "model.safetensors"]))
        return cls.load_directory(directory, **overrides)

    @classmethod
    def load_directory(cls, directory: str | os.PathLike, **overrides) -> "VQGAN":
        """Our format from a local directory; `overrides` set VQGANConfig fields; bad files are one-line
        InputErrors naming the file. The tensors' names and shapes are checked against a model built on
        the meta device before anything is allocated, so neither an absurd size in the config nor a
        checkpoint that does not fit it gets as far as an allocation."""
        from safetensors.torch import load_file

        from lvm_base.checkpointing import check_state, read_json_object, safetensors_shapes, shapes

        path, weights = Path(directory) / "config.json", Path(directory) / "model.safetensors"
        d = read_json_object(path, "tokenizer config")
        d.pop("format", None)
        try:
            cfg = VQGANConfig.from_dict({**d, **overrides})
        except (TypeError, ValueError) as e:
            raise InputError(f"{path}: invalid tokenizer config ({e})") from None
        got = safetensors_shapes(weights)
        with torch.device("meta"):
            check_state(shapes(cls(cfg).state_dict()), got, weights)
        try:
            state = load_file(str(weights))
        except Exception as e:  # the file changed since its header was read
            raise InputError(f"{weights}: cannot read ({str(e).splitlines()[0][:200]})") from None
        return cls(cfg).load_checked(state, weights)

    def load_checked(self, state: dict, source) -> "VQGAN":
        """Load `state` strictly (eval mode), or raise InputError naming the missing, unexpected or
        mis-shaped keys (tokenizer.loaders.check_state)."""
        from lvm_base.checkpointing import check_state, shapes

        check_state(shapes(self.state_dict()), shapes(state), source)
        self.load_state_dict(state, strict=True)
        return self.eval()
