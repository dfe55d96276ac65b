"""The token contract: the single source of the vocabulary and sequence layout (docs/released-lvm.md section 1).

- Image codes are ids ``0 .. K-1`` (K = codebook size, 8192 for full models).
- Ids from K up are reserved specials, vocabulary = K + 100; ``PAD = K``. There is no BOS/EOS: a visual
  sequence is its images' tokens, 256 per image, in order, at most 16 images (4096 tokens).
- Image ``i`` of a visual sequence sits at positions ``256*i .. 256*i+255`` counted from the start of that
  sequence, in training and in prompting. Sampling never emits an id >= K.

Functions accept numpy arrays or torch tensors and return the same kind.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tokenizer.common.errors import InputError

TOKENS_PER_IMAGE = 256
IMAGES_PER_CONTEXT = 16
NUM_RESERVED = 100
DEFAULT_CODEBOOK_SIZE = 8192


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def _cat(parts, like):
    if _is_torch(like):
        import torch

        return torch.cat(list(parts))
    return np.concatenate(list(parts))


def _arange(n, like):
    if _is_torch(like):
        import torch

        return torch.arange(n, dtype=torch.long, device=like.device)
    return np.arange(n, dtype=np.int64)


@dataclass(frozen=True)
class TokenLayout:
    """Vocabulary and sequence layout for a codebook of size K."""

    codebook_size: int = DEFAULT_CODEBOOK_SIZE
    tokens_per_image: int = TOKENS_PER_IMAGE
    images_per_context: int = IMAGES_PER_CONTEXT
    num_reserved: int = NUM_RESERVED

    def __post_init__(self):
        if self.codebook_size < 2 or self.tokens_per_image < 1 or self.images_per_context < 1:
            raise InputError(f"invalid token layout {self}")

    @property
    def pad_id(self) -> int:
        return self.codebook_size

    @property
    def vocab_size(self) -> int:
        return self.codebook_size + self.num_reserved

    @property
    def context_length(self) -> int:
        return self.tokens_per_image * self.images_per_context

    @classmethod
    def from_vocab_size(cls, vocab_size: int, **kw) -> "TokenLayout":
        """The layout of a model whose embedding has `vocab_size` rows (e.g. 8292 -> K = 8192)."""
        if vocab_size <= NUM_RESERVED + 1:
            raise InputError(f"vocab size {vocab_size} is too small for {NUM_RESERVED} reserved ids")
        return cls(codebook_size=vocab_size - NUM_RESERVED, **kw)

    @classmethod
    def from_model_config(cls, config) -> "TokenLayout":
        """The layout of an HF Llama config: K from its vocabulary, the context from its positions."""
        return cls.from_vocab_size(config.vocab_size,
                                   images_per_context=max(1, config.max_position_embeddings // TOKENS_PER_IMAGE))

    # ---- ids ----
    def is_image_code(self, ids):
        return (ids >= 0) & (ids < self.codebook_size)

    def check_codes(self, codes, what: str = "codes"):
        """Raise InputError unless every value is an image code (0 <= id < K)."""
        if (codes.numel() if _is_torch(codes) else codes.size) == 0:
            return codes
        lo, hi = int(codes.min()), int(codes.max())
        if lo < 0 or hi >= self.codebook_size:
            raise InputError(
                f"{what}: values must be image codes in [0, {self.codebook_size - 1}], found range [{lo}, {hi}]"
            )
        return codes

    # ---- images <-> flat tokens ----
    def image_start(self, i: int) -> int:
        """Position of the first token of image `i` within its visual sequence."""
        return i * self.tokens_per_image

    def n_images(self, n_tokens: int) -> int:
        if n_tokens % self.tokens_per_image:
            raise InputError(f"{n_tokens} tokens is not a whole number of {self.tokens_per_image}-token images")
        return n_tokens // self.tokens_per_image

    def flatten(self, images):
        """Codes of a visual sequence -> (tokens, positions).

        `images` is an (n, 256) array/tensor or a list of per-image code arrays (each 256 values, any shape,
        e.g. 16x16). Returns 1-D int64 tokens of length n*256 and positions ``0 .. n*256-1``, so image i
        starts at position 256*i.
        """
        if isinstance(images, (list, tuple)):
            if not images:
                raise InputError("a visual sequence needs at least one image")
            parts = [im.reshape(-1) for im in images]
            like = parts[0]
        else:
            like = images
            parts = [images.reshape(-1)]
        for k, p in enumerate(parts):
            n = p.shape[0]
            if isinstance(images, (list, tuple)) and n != self.tokens_per_image:
                raise InputError(f"image {k} has {n} codes, expected {self.tokens_per_image}")
        tokens = _cat(parts, like)
        tokens = tokens.long() if _is_torch(tokens) else tokens.astype(np.int64)
        n_img = self.n_images(tokens.shape[0])
        if n_img > self.images_per_context:
            raise InputError(f"a visual sequence holds at most {self.images_per_context} images, got {n_img}")
        self.check_codes(tokens)
        return tokens, _arange(tokens.shape[0], tokens)

    def unflatten(self, tokens):
        """Flat tokens (length n*256) -> (n, 256) codes per image."""
        n = self.n_images(tokens.shape[-1])
        return tokens.reshape(*tokens.shape[:-1], n, self.tokens_per_image)

    def keep_last_images(self, tokens, max_images: int | None = None):
        """Crop a flat visual sequence to its last `max_images` whole images (default: context - 1).

        This is how prompting makes room for one more image when the context is full (the released
        inference keeps the last 15 images and generates the 16th). Positions restart at 0 afterwards.
        Works on (..., n*256). Returns (tokens, number of images dropped).
        """
        if max_images is None:
            max_images = self.images_per_context - 1
        n = self.n_images(tokens.shape[-1])
        drop = max(0, n - max_images)
        return tokens[..., drop * self.tokens_per_image:], drop


DEFAULT_LAYOUT = TokenLayout()
