"""The sequence model: a plain Hugging Face `LlamaForCausalLM`, configured by `ModelConfig`.

Using the HF class as is means checkpoints are ordinary HF directories (the released LVM-7B loads
unchanged) and the rest of the HF ecosystem can load and serve what we train.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from lvm.tokens import NUM_RESERVED, TOKENS_PER_IMAGE, TokenLayout


@dataclass
class ModelConfig:
    """LLaMA hyper-parameters. Defaults are the official LVM family's shared settings."""

    hidden_size: int = 1024
    intermediate_size: int = 2688
    num_hidden_layers: int = 22
    num_attention_heads: int = 8
    num_key_value_heads: int | None = None  # None = multi-head attention (as the released models)
    codebook_size: int = 8192  # K; the vocabulary is K + 100 reserved ids (token contract)
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by "
                             f"num_attention_heads {self.num_attention_heads}")
        if self.max_position_embeddings % TOKENS_PER_IMAGE:
            raise ValueError(f"max_position_embeddings must be a multiple of {TOKENS_PER_IMAGE}")

    @property
    def layout(self) -> TokenLayout:
        return TokenLayout(codebook_size=self.codebook_size,
                           images_per_context=self.max_position_embeddings // TOKENS_PER_IMAGE)

    @property
    def vocab_size(self) -> int:
        return self.codebook_size + NUM_RESERVED

    def to_hf(self):
        from transformers import LlamaConfig

        layout = self.layout
        return LlamaConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads or self.num_attention_heads,
            max_position_embeddings=self.max_position_embeddings,
            rms_norm_eps=self.rms_norm_eps,
            rope_theta=self.rope_theta,
            initializer_range=self.initializer_range,
            tie_word_embeddings=self.tie_word_embeddings,
            hidden_act="silu",
            # No BOS/EOS exists in the token contract; PAD = K. Setting bos/eos to None keeps HF from
            # treating image codes 1 and 2 as special (the released config's defaults are meaningless).
            pad_token_id=layout.pad_id,
            bos_token_id=None,
            eos_token_id=None,
        )

    def build(self):
        """A freshly initialised `LlamaForCausalLM` of this shape."""
        from transformers import LlamaForCausalLM

        return LlamaForCausalLM(self.to_hf())


@contextlib.contextmanager
def quiet_hf_progress():
    """No HF progress bars inside (one-shard saves and tiny loads would print a bar each time); the
    caller's setting is restored after."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()
