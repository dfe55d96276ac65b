"""Where checkpoints are and how they load: the one HF model loader, the one model/tokenizer fit check, and
the default paths that `lvm demo` leaves for `lvm prompt` and `lvm eval tasks`.

A model checkpoint is a plain Hugging Face `LlamaForCausalLM` directory (ours or the released LVM's), local or
a hub id in the HF cache; a tokenizer checkpoint is anything `tokenizer.load_tokenizer` reads. They fit when
the model's vocabulary is the tokenizer's codebook plus the reserved ids and the tokenizer makes one image's
worth of tokens (lvm/tokens.py).
"""

from __future__ import annotations

from pathlib import Path

from lvm.tokens import TokenLayout
from tokenizer.common.errors import InputError

DEMO_OUT = Path("runs/demo")


def demo_checkpoints(out: str | Path = DEMO_OUT) -> tuple[Path, Path]:
    """(model dir, tokenizer dir) that `lvm demo` leaves under `out` (the default of `lvm prompt`)."""
    return Path(out) / "model", Path(out) / "tokenizer"


def or_demo(kind: str, path=None) -> Path:
    """`path`, or when it is None the demo's `kind` ("model" | "tokenizer") checkpoint; one-line error if
    that does not exist."""
    if path is not None:
        return Path(path)
    model, tok = demo_checkpoints()
    demo = model if kind == "model" else tok
    if not (demo / "config.json").is_file():
        raise InputError(f"no --{kind} given and the demo {kind} {demo} does not exist "
                         f"(run 'lvm demo' first, or pass --{kind} DIR)")
    return demo


def load_causal_lm(path, device: str = "auto", precision: str = "auto", fp32_on_cpu: bool = True):
    """(HF LlamaForCausalLM in eval mode, its Plan) on the policy's device.

    `path` is a local directory or a Hugging Face hub id `owner/name[@revision][/sub/folder]`, read from the
    HF cache (`tokenizer.common.hub.resolve_checkpoint`).

    Off the CPU the weights load straight onto the device in the plan's dtype, so a half-precision 7B never
    has an fp32 copy in RAM. On a CPU they stay fp32 (autocast computes in the plan's precision) unless
    `fp32_on_cpu=False` (the generation engine, which keeps its own copy in the plan's dtype). Training
    loads with device="cpu", precision="fp32": accelerate moves the model and sets its precision.
    """
    import torch
    from transformers import LlamaForCausalLM

    from lvm.model import quiet_hf_progress
    from tokenizer.common.hardware import resolve
    from tokenizer.common.hub import resolve_checkpoint

    plan = resolve(device, precision, "inference")
    path = resolve_checkpoint(path, "model")  # a hub id becomes its snapshot in the HF cache
    if not (path / "config.json").is_file():
        raise InputError(f"{path}: not a model directory (no config.json)")
    _check_llama(path)
    load = {"dtype": torch.float32 if fp32_on_cpu else plan.dtype}
    if plan.device_type != "cpu":
        load = {"dtype": plan.dtype, "device_map": {"": plan.device}}
    try:
        with quiet_hf_progress():
            model = LlamaForCausalLM.from_pretrained(path, **load)
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: cannot load model ({str(e).splitlines()[0]})") from None
    return model.eval(), plan


def _check_llama(path: Path) -> None:
    """One-line InputError unless path/config.json describes a Llama: transformers would otherwise build a
    default-size (7B) Llama from a config without model_type, such as a tokenizer's."""
    import json

    try:
        kind = json.loads((path / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        kind = None
    if kind != "llama":
        raise InputError(f"{path}: not a Llama model directory (config.json model_type is {kind!r}, expected "
                         "'llama'; is this a tokenizer?)")


def check_fit(layout: TokenLayout, tok, model_name="the model", tokenizer_name="the tokenizer") -> None:
    """One-line InputError unless tokenizer `tok` (codebook_size, codes_per_image) fits a model of `layout`."""
    if tok.codebook_size != layout.codebook_size:
        raise InputError(f"{tokenizer_name} has {tok.codebook_size} codes but {model_name}'s vocabulary "
                         f"{layout.vocab_size} is for a codebook of {layout.codebook_size}")
    if tok.codes_per_image != layout.tokens_per_image:
        raise InputError(f"{tokenizer_name} makes {tok.codes_per_image} codes per image; {model_name} expects "
                         f"{layout.tokens_per_image}")


def load_pair(model_dir, tokenizer_dir, device: str = "auto", precision: str = "auto"):
    """(HF model eval, tokenizer eval, Plan), both on the policy's device, after checking that they fit."""
    from tokenizer import load_tokenizer

    model, plan = load_causal_lm(model_dir, device, precision)
    tok = load_tokenizer(tokenizer_dir, device=plan.device, precision=precision)
    check_fit(TokenLayout.from_model_config(model.config), tok, f"model {model_dir}", f"tokenizer {tokenizer_dir}")
    return model, tok, plan
