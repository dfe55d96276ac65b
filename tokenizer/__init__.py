"""tokenizer: images <-> discrete codes (VQGAN), plus the image I/O every other package uses.

Kept light on import: heavy modules (torch models) load only when their names are first used, so the
`lvm` CLI starts fast and `import tokenizer` never pulls in pytorch_lightning.
"""

from .errors import ImageLoadError, InputError

__all__ = ["ImageLoadError", "InputError"]
