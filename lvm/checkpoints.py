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
from lvm_base.errors import InputError

DEMO_OUT = Path("runs/demo")


def demo_checkpoints(out: str | Path = DEMO_OUT) -> tuple[Path, Path]:
    """(model dir, tokenizer dir) that `lvm demo` leaves under `out` (the default of `lvm prompt`)."""
    return Path(out) / "model", Path(out) / "tokenizer"


SHIPPED_MODEL = "assets/lvm-small"  # the project's own model (assets/lvm-small/README.md), relative to its root


def default_model() -> Path:
    """The model of `lvm prompt`, `serve` and `eval tasks` without --model: the shipped lvm-small, else
    the demo's model; a one-line error when neither exists."""
    from lvm_base.config import project_path

    for path in (project_path(SHIPPED_MODEL), demo_checkpoints()[0]):
        if (path / "config.json").is_file():
            return path
    raise InputError(f"no --model given and neither {SHIPPED_MODEL} nor the demo model {demo_checkpoints()[0]} "
                     "exists (pass --model DIR, or run 'lvm demo')")


def resolve_pair(model=None, tokenizer=None) -> tuple:
    """(model, tokenizer) a command loads: --model or `default_model()`; --tokenizer or the one the model
    records (`tokenizer_for`)."""
    model = default_model() if model is None else model
    return model, tokenizer_for(model, tokenizer)


def load_causal_lm(path, device: str = "auto", precision: str = "auto", fp32_on_cpu: bool = True):
    """(HF LlamaForCausalLM in eval mode, its Plan) on the policy's device.

    `path` is a local directory or a Hugging Face hub id `owner/name[@revision][/sub/folder]`, read from the
    HF cache (`lvm_base.hub.resolve_checkpoint`).

    Off the CPU the weights load straight onto the device in the plan's dtype, so a half-precision 7B never
    has an fp32 copy in RAM. On a CPU they stay fp32 (autocast computes in the plan's precision) unless
    `fp32_on_cpu=False` (the generation engine, which keeps its own copy in the plan's dtype). Training
    loads with device="cpu", precision="fp32": accelerate moves the model and sets its precision.

    The load is strict: a config.json with bad values, an unreadable weights file, and tensors missing,
    unexpected or mis-shaped for the config are one-line InputErrors naming the file (transformers alone
    would fill missing tensors with random values and go on).
    """
    import torch
    from transformers import LlamaForCausalLM

    from lvm.model import hf_errors_only, quiet_hf_progress
    from lvm_base.hardware import resolve
    from lvm_base.hub import resolve_checkpoint

    plan = resolve(device, precision, "inference")
    path = resolve_checkpoint(path, "model")  # a hub id becomes its snapshot in the HF cache
    if not (path / "config.json").is_file():
        raise InputError(f"{path}: not a model directory (no config.json)")
    config = llama_config(path)
    check_llama_weights(path, config)
    load = {"dtype": torch.float32 if fp32_on_cpu else plan.dtype}
    if plan.device_type != "cpu":
        load = {"dtype": plan.dtype, "device_map": {"": plan.device}}
    try:
        with quiet_hf_progress(), hf_errors_only():  # its multi-line load report: each case is an InputError here
            model, info = LlamaForCausalLM.from_pretrained(path, config=config, output_loading_info=True,
                                                           ignore_mismatched_sizes=True, **load)
    except (OSError, ValueError, RuntimeError, TypeError, KeyError) as e:
        raise InputError(f"{path}: cannot load model ({str(e).splitlines()[0][:300]})") from None
    # What transformers itself saw, for weights the header check above does not read (pytorch_model.bin)
    bad = {k: sorted(map(str, info.get(k) or ())) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if any(bad.values()) or info.get("error_msgs"):
        raise InputError(f"{path}: checkpoint does not match its config.json: " + "; ".join(
            f"{k.replace('_', ' ')}: {', '.join(v[:10])}" for k, v in bad.items() if v)
            + (f" {' '.join(str(info['error_msgs'][0]).split())[:200]}" if info.get("error_msgs") else ""))
    return model.eval(), plan


def _llama_rules() -> dict:
    """The values of a Llama config.json that are checked before transformers sees them: it checks types
    but builds a model with no layers, or fails deep in torch, from a size of 0 or below."""
    from lvm_base.validate import POSITIVE, between, optional

    sizes = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size",
             "max_position_embeddings")
    return {**dict.fromkeys(sizes, POSITIVE), "num_key_value_heads": optional(POSITIVE),
            "head_dim": optional(POSITIVE), "rms_norm_eps": between(0.0, 1.0, open_lo=True, open_hi=True)}


def llama_config(path: Path):
    """The LlamaConfig of path/config.json, or a one-line InputError naming the file: not UTF-8, not a JSON
    object, not a Llama (transformers would build a default 7B from a tokenizer's config), or a bad size."""
    from transformers import LlamaConfig

    from lvm.model import is_grid_rope, quiet_grid_rope
    from lvm_base.checkpointing import read_json_object

    file = path / "config.json"
    d = read_json_object(file, "model config")
    if d.get("model_type") != "llama":
        raise InputError(f"{path}: not a Llama model directory (config.json model_type is {d.get('model_type')!r}, "
                         "expected 'llama'; is this a tokenizer?)")
    for key, rule in _llama_rules().items():
        value = d.get(key, 1e-6 if key == "rms_norm_eps" else None)
        if not rule(value):
            raise InputError(f"{file}: {key}: must be {rule.text}, got {value!r}")
    heads, kv = d["num_attention_heads"], d.get("num_key_value_heads") or d["num_attention_heads"]
    if heads % kv or (d.get("head_dim") is None and d["hidden_size"] % heads):
        raise InputError(f"{file}: num_attention_heads {heads} must be a multiple of num_key_value_heads {kv}, "
                         f"and hidden_size {d['hidden_size']} of num_attention_heads (unless head_dim is set)")
    try:
        with quiet_grid_rope(is_grid_rope(d)):
            return LlamaConfig.from_dict(d)
    except Exception as e:  # transformers' strict dataclass errors derive from Exception only
        raise InputError(f"{file}: invalid model config ({' '.join(str(e).split())[:300]})") from None


def _weight_files(path: Path) -> list[Path]:
    """The safetensors file(s) of an HF model directory (one file, or the shards its index names); [] when
    it has none (pytorch_model.bin: transformers reads it with weights_only, and its report is checked)."""
    from lvm_base.checkpointing import read_json_object

    if (path / "model.safetensors").is_file():
        return [path / "model.safetensors"]
    index = path / "model.safetensors.index.json"
    if not index.is_file():
        return []
    wmap = read_json_object(index, "safetensors index").get("weight_map")
    if not isinstance(wmap, dict) or not all(isinstance(v, str) for v in wmap.values()):
        raise InputError(f"{index}: weight_map must be an object of tensor name -> shard file")
    files = [path / f for f in sorted(set(wmap.values()))]
    gone = [f for f in files if not f.is_file() or f.resolve().parent != path.resolve()]
    if gone:
        raise InputError(f"{index}: names shard {gone[0].name}, which is not a file in {path}")
    return files


def check_llama_weights(path: Path, config) -> None:
    """Compare the tensors in the safetensors headers with a model of `config` built on the meta device, before
    anything is allocated: one line naming the first missing, unexpected or mis-shaped tensors. A tied copy
    (lm_head = embed_tokens) may be absent; per-layer rotary inv_freq buffers that older transformers saved
    are recomputed, so they are not unexpected."""
    import torch
    from transformers import LlamaForCausalLM

    from lvm.model import hf_errors_only

    from lvm_base.checkpointing import check_state, safetensors_shapes, shapes

    files = _weight_files(path)
    if not files:
        return
    got = safetensors_shapes(files)
    with torch.device("meta"), hf_errors_only():
        meta = LlamaForCausalLM(config)
    aliases: dict = {}
    for name, p in meta.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(p), []).append(name)
    tied = {n for names in aliases.values() if len(names) > 1 and any(x in got for x in names) for n in names}
    legacy = {k for k in got if k.endswith("rotary_emb.inv_freq")}
    check_state(shapes(meta.state_dict()), got, files[0] if len(files) == 1 else path / "model.safetensors.index.json",
                ignore_missing=tied, ignore_unexpected=legacy)


def check_fit(layout: TokenLayout, tok, model_name="the model", tokenizer_name="the tokenizer") -> None:
    """One-line InputError unless tokenizer `tok` (codebook_size, codes_per_image) fits a model of `layout`."""
    if tok.codebook_size != layout.codebook_size:
        raise InputError(f"{tokenizer_name} has {tok.codebook_size} codes but {model_name}'s vocabulary "
                         f"{layout.vocab_size} is for a codebook of {layout.codebook_size}")
    if tok.codes_per_image != layout.tokens_per_image:
        raise InputError(f"{tokenizer_name} makes {tok.codes_per_image} codes per image; {model_name} expects "
                         f"{layout.tokens_per_image}")


def load_pair(model_dir, tokenizer_dir=None, device: str = "auto", precision: str = "auto"):
    """(HF model eval, tokenizer eval, Plan), both on the policy's device, after checking that they fit;
    `tokenizer_dir` None: the one the model records."""
    from tokenizer import load_tokenizer

    tokenizer_dir = tokenizer_for(model_dir, tokenizer_dir)
    model, plan = load_causal_lm(model_dir, device, precision)
    tok = load_tokenizer(tokenizer_dir, device=plan.device, precision=precision)
    check_fit(TokenLayout.from_model_config(model.config), tok, f"model {model_dir}", f"tokenizer {tokenizer_dir}")
    return model, tok, plan


# A model directory records the tokenizer that made its codes in config.json (HF keeps unknown keys): a path
# relative to the directory, so the pair moves together, or a hub id. The released LVM-7B has no record.
TOKENIZER_KEY = "lvm_tokenizer"


def write_tokenizer_record(model_dir, tokenizer) -> None:
    """Record `tokenizer` in `model_dir`/config.json (after the directory was copied or moved)."""
    import json

    from lvm_base.files import atomic_write_text

    path = Path(model_dir) / "config.json"
    cfg = json.loads(path.read_text())
    cfg[TOKENIZER_KEY] = tokenizer_reference(tokenizer, model_dir)
    atomic_write_text(path, json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def tokenizer_reference(tokenizer, model_dir) -> str:
    """What a model saved under `model_dir` records for `tokenizer` (a local folder or a hub id)."""
    import os

    from lvm_base.config import project_path

    local = project_path(tokenizer)
    if not local.exists():
        return str(tokenizer)  # a hub id: recorded as given
    return Path(os.path.relpath(local.resolve(), Path(model_dir).resolve())).as_posix()


def recorded_tokenizer(model_dir) -> str | None:
    """The tokenizer a model directory records (a path resolved against it, or a hub id), or None."""
    import json

    try:
        cfg = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    ref = cfg.get(TOKENIZER_KEY) if isinstance(cfg, dict) else None
    if not isinstance(ref, str) or not ref:
        return None
    local = Path(model_dir) / ref
    return str(local.resolve()) if local.exists() or ref.startswith(".") else ref


def tokenizer_for(model_dir, tokenizer=None):
    """`tokenizer` if given, else the one `model_dir` (a folder or a hub id) records, else for the demo's
    model the demo's tokenizer; a one-line error when there is none."""
    if tokenizer is not None:
        return tokenizer
    from lvm_base.hub import resolve_checkpoint

    ref = recorded_tokenizer(resolve_checkpoint(model_dir, "model"))
    demo_model, demo_tok = demo_checkpoints()
    if ref is None and Path(model_dir) == demo_model and (demo_tok / "config.json").is_file():
        return demo_tok
    if ref is None:
        raise InputError(f"{model_dir}: the model records no tokenizer ({TOKENIZER_KEY} in config.json); "
                         "pass --tokenizer DIR")
    return ref
