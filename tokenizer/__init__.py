"""tokenizer: images <-> discrete codes (VQGAN): the model, its loaders, training and evaluation.

    from tokenizer import load_tokenizer
    tok = load_tokenizer("runs/tok")              # ours, released LVM (MUSE) dir, or taming .ckpt + yaml
    codes = tok.encode_images(["a.png", "b.jpg"])  # long (2, 256)
    images = tok.decode_to_pil(codes)

Kept light on import: heavy modules (torch models) load only when their names are first used, so the
`lvm` CLI starts fast and `import tokenizer` never pulls in pytorch_lightning.
"""

from lvm_base.errors import ImageLoadError, InputError

# name -> submodule that defines it; imported on first attribute access (PEP 562).
_LAZY = {
    "VQGAN": "model", "VQGANConfig": "model",
    "L2Quantizer": "quantize", "NormedQuantizer": "quantize",
    "load_tokenizer": "loaders",
}

__all__ = ["ImageLoadError", "InputError", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tokenizer' has no attribute {name!r}")
