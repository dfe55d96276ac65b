"""Load a tokenizer from any of the three checkpoint formats it meets.

`load_tokenizer(path)` looks at what is there (`path` may also be a hub id, `owner/name[/sub/folder]`, whose
snapshot in the Hugging Face cache is then what it looks at):
1. ours: a directory with `config.json` (`"format": "lvm-vqgan"`) + `model.safetensors`;
2. the released LVM tokenizer (open-MUSE `VQGANModel` layout): a directory with `config.json` +
   `pytorch_model.bin`; no middle attention, pixels in [0, 1], resize "squash" (what its inference does);
3. a taming-transformers Lightning `.ckpt` (a file, or a directory holding `checkpoints/last.ckpt` or one
   `*.ckpt`) + its YAML config (next to it, or in `configs/` beside `checkpoints/`); pixels in [-1, 1];
   the discriminator/LPIPS `loss.*` keys are ignored.

Every load is strict: missing or unexpected keys end with an InputError listing them. `torch.load` always
runs with `weights_only=True`.
"""

from __future__ import annotations

import os
from pathlib import Path

from lvm_base.checkpointing import read_json_object
from lvm_base.errors import InputError
from lvm_base.hub import resolve_checkpoint
from .model import FORMAT, VQGAN, VQGANConfig


def _torch_load(path: Path) -> dict:
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle with non-tensor objects, truncated file, ...
        raise InputError(f"{path}: cannot load checkpoint safely ({str(e).splitlines()[0][:200]})") from None
    if not isinstance(obj, dict):
        raise InputError(f"{path}: expected a state dict, got {type(obj).__name__}")
    return obj


def _read_json(path: Path) -> dict:
    return read_json_object(path, "tokenizer config")


def _config(cls_kwargs: dict, source) -> VQGANConfig:
    try:
        return VQGANConfig(**cls_kwargs)
    except (TypeError, ValueError) as e:
        raise InputError(f"{source}: invalid tokenizer config ({e})") from None


def muse_config(d: dict, source) -> VQGANConfig:
    """open-MUSE VQGANModel config.json -> VQGANConfig."""
    try:
        kw = dict(
            resolution=d.get("resolution", 256),
            in_channels=d.get("num_channels", 3),
            hidden_channels=d["hidden_channels"],
            channel_mult=tuple(d["channel_mult"]),
            num_res_blocks=d["num_res_blocks"],
            attn_resolutions=tuple(d.get("attn_resolutions", ())),
            mid_attention=not d.get("no_attn_mid_block", False),
            z_channels=d["z_channels"],
            embed_dim=d.get("quantized_embed_dim", d["z_channels"]),
            codebook_size=d["num_embeddings"],
            quantizer="l2",
            beta=d.get("commitment_cost", 0.25),
            dropout=d.get("dropout", 0.0),
            resamp_with_conv=d.get("resample_with_conv", True),
            value_range=(0.0, 1.0),
            resize_mode="squash",
        )
    except KeyError as e:
        raise InputError(f"{source}: missing key {e} in a VQGANModel config") from None
    except TypeError as e:
        raise InputError(f"{source}: invalid VQGANModel config ({e})") from None
    return _config(kw, source)


def load_muse(directory: Path, **overrides) -> VQGAN:
    cfg = muse_config(_read_json(directory / "config.json"), directory / "config.json")
    for k, v in overrides.items():
        setattr(cfg, k, v)
    state = _torch_load(directory / "pytorch_model.bin")
    return VQGAN(cfg).load_checked(state, directory / "pytorch_model.bin")


def taming_config(yaml_path: Path) -> VQGANConfig:
    import yaml

    try:
        y = yaml.safe_load(yaml_path.read_bytes().decode("utf-8"))
        p = y["model"]["params"]
        dd = p["ddconfig"]
        if dd.get("double_z", False):
            raise InputError(f"{yaml_path}: double_z=true is a KL autoencoder, not a VQGAN")
        kw = dict(resolution=dd["resolution"], in_channels=dd.get("in_channels", 3), hidden_channels=dd["ch"],
                  channel_mult=tuple(dd["ch_mult"]), num_res_blocks=dd["num_res_blocks"],
                  attn_resolutions=tuple(dd.get("attn_resolutions", ())), mid_attention=True,
                  z_channels=dd["z_channels"], embed_dim=p["embed_dim"], codebook_size=p["n_embed"],
                  quantizer="l2", dropout=dd.get("dropout", 0.0), value_range=(-1.0, 1.0), resize_mode="crop")
    except (OSError, UnicodeDecodeError, yaml.YAMLError, KeyError, TypeError, AttributeError) as e:
        raise InputError(f"{yaml_path}: not a taming VQGAN config (need model.params.ddconfig; "
                         f"{type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    return _config(kw, yaml_path)


def _find_taming_files(path: Path) -> tuple[Path, Path]:
    if path.is_dir():
        cands = [path / "checkpoints" / "last.ckpt"] + sorted(path.glob("*.ckpt")) + \
            sorted((path / "checkpoints").glob("*.ckpt"))
        ckpt = next((c for c in cands if c.is_file()), None)
        if ckpt is None:
            raise InputError(f"{path}: no .ckpt file found")
    else:
        ckpt = path
    yamls = [ckpt.with_suffix(".yaml")] + sorted(ckpt.parent.glob("*.yaml")) + \
        sorted((ckpt.parent.parent / "configs").glob("*.yaml")) + sorted((ckpt.parent / "configs").glob("*.yaml"))
    y = next((c for c in yamls if c.is_file()), None)
    if y is None:
        raise InputError(f"{ckpt}: no taming YAML config found next to it (or in ../configs/)")
    return ckpt, y


def load_taming(path: Path, yaml_path: Path | None = None, **overrides) -> VQGAN:
    ckpt, found_yaml = _find_taming_files(path) if yaml_path is None else (path, yaml_path)
    cfg = taming_config(Path(found_yaml))
    for k, v in overrides.items():
        setattr(cfg, k, v)
    obj = _torch_load(ckpt)
    state = obj.get("state_dict", obj)
    state = {k: v for k, v in state.items() if not k.startswith("loss.")}
    return VQGAN(cfg).load_checked(state, ckpt)


def load_tokenizer(path: str | os.PathLike, yaml_path: str | os.PathLike | None = None,
                   device: str | None = "auto", precision: str | None = "auto", **overrides) -> VQGAN:
    """Detect the checkpoint format at `path`, build the model and load its weights (eval mode).

    `path` is a local file/directory or a Hugging Face hub id `owner/name[@revision][/sub/folder]`, read
    from the HF cache (`lvm_base.hub.resolve_checkpoint`).

    `device` and `precision` (each "auto" by default) go through the hardware policy
    (`lvm_base.hardware.resolve`, purpose "inference"): the model moves to that device and its
    `config.precision` becomes `precision`, whatever the checkpoint's config records (a "bf16" saved on
    one machine must not force bf16 on a CPU that emulates it). "auto" stays "auto" in the config, so the
    model resolves it for the device it is on (`VQGAN.inference_plan()` says what it picked).
    `overrides` set other VQGANConfig fields after loading the config.
    """
    from lvm_base.hardware import resolve

    plan = resolve(device, precision, "inference")  # a device that is not there fails before any reading
    overrides["precision"] = "auto" if (precision or "auto").strip().lower() == "auto" else plan.precision
    path = resolve_checkpoint(path, "tokenizer")  # a hub id becomes its snapshot in the HF cache
    if not path.exists():
        raise InputError(f"{path}: no such tokenizer checkpoint")
    if path.is_dir() and (path / "model.safetensors").is_file() and (path / "config.json").is_file():
        model = VQGAN.load_directory(path, **overrides)
    elif path.is_dir() and (path / "pytorch_model.bin").is_file() and (path / "config.json").is_file():
        model = load_muse(path, **overrides)
    elif path.suffix == ".ckpt" or (path.is_dir() and (list(path.glob("*.ckpt")) or
                                                       list(path.glob("checkpoints/*.ckpt")))):
        model = load_taming(path, Path(yaml_path) if yaml_path else None, **overrides)
    else:
        raise InputError(f"{path}: not a tokenizer checkpoint (expected config.json + model.safetensors, "
                         f"config.json + pytorch_model.bin, or a taming .ckpt + YAML)")
    return model.to(plan.device)


__all__ = ["load_tokenizer", "muse_config", "taming_config", "FORMAT"]
