"""The token contract: the single source of the vocabulary and sequence layout (docs/released-lvm.md section 1).

- Image codes are ids ``0 .. K-1`` (K = codebook size, 8192 for full models).
- Ids from K up are reserved specials, vocabulary = K + 100; ``PAD = K``. There is no BOS/EOS: a visual
  sequence is its images' tokens, 256 per image, in order, at most 16 images (4096 tokens).
- Image ``i`` of a visual sequence sits at positions ``256*i .. 256*i+255`` counted from the start of that
  sequence, in training and in prompting. Sampling never emits an id >= K.

Methods accept numpy arrays or torch tensors and return the same kind.
"""

from __future__ import annotations

from dataclasses import dataclass

from data_builders.sequence import MAX_IMAGES
from lvm_base.errors import InputError

TOKENS_PER_IMAGE = 256
IMAGES_PER_CONTEXT = MAX_IMAGES  # the data builders' limit on a visual sequence
NUM_RESERVED = 100
DEFAULT_CODEBOOK_SIZE = 8192


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


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
    def n_images(self, n_tokens: int) -> int:
        if n_tokens % self.tokens_per_image:
            raise InputError(f"{n_tokens} tokens is not a whole number of {self.tokens_per_image}-token images")
        return n_tokens // self.tokens_per_image

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
