"""The sequence model: a plain Hugging Face `LlamaForCausalLM`, configured by `ModelConfig`.

Using the HF class as is means checkpoints are ordinary HF directories (the released LVM-7B loads
unchanged) and the rest of the HF ecosystem can load and serve what we train.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch

from lvm.tokens import DEFAULT_CODEBOOK_SIZE, DEFAULT_LAYOUT, NUM_RESERVED, TOKENS_PER_IMAGE, TokenLayout
from lvm_base.validate import FINITE, NON_NEGATIVE, POSITIVE, above, at_least, checks, optional

ROPE_THETA = 10000.0  # the released models' rope base


@dataclass
# Checked before __post_init__, whose divisions need positive sizes (lvm_base.validate).
@checks(hidden_size=POSITIVE, intermediate_size=POSITIVE, num_hidden_layers=POSITIVE, num_attention_heads=POSITIVE,
        num_key_value_heads=optional(POSITIVE), codebook_size=at_least(2), max_position_embeddings=POSITIVE,
        rms_norm_eps=above(0), rope_theta=above(0), initializer_range=at_least(0.0), grid_heads=NON_NEGATIVE,
        grid_copy=FINITE)
class ModelConfig:
    """LLaMA hyper-parameters. Defaults are the official LVM family's shared settings."""

    hidden_size: int = 1024
    intermediate_size: int = 2688
    num_hidden_layers: int = 22
    num_attention_heads: int = 8
    num_key_value_heads: int | None = None  # None = multi-head attention (as the released models)
    codebook_size: int = DEFAULT_CODEBOOK_SIZE  # K; the vocabulary is K + the reserved ids (token contract)
    max_position_embeddings: int = DEFAULT_LAYOUT.context_length  # 16 images of 256 tokens
    rms_norm_eps: float = 1e-6
    rope_theta: float = ROPE_THETA  # default rope only: grid rope's frequencies are fixed
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False
    # Visual-sequence priors for small models trained from scratch (all three off = the released recipe).
    # A model that predicts token p+1 from token p gains most from the token at p+1 of the earlier images,
    # 255 tokens (one image less one) back. Learning that positional look-up from scratch is slow: a small
    # model sits on a long plateau before it copies across 256 tokens, far longer than across a few tokens,
    # and longer than a CPU's minutes afford. `grid_rope` + `grid_heads` give the heads that look-up at
    # init; it is then trained as any weight. The checkpoint stays a plain HF Llama (config fields
    # `rope_parameters`, `attention_bias`).
    grid_rope: bool = False  # rope frequencies pi / 2**i: periods 2, 4, ..., 256, ... tokens (binary digits)
    attention_bias: bool = False  # HF Llama's q/k/v/o biases; the grid heads' fixed query/key live there
    grid_heads: int = 0  # heads per layer that start out looking 1, 2, ... images back (needs the two above)
    # > 0: the first layer's first grid head also starts out passing the token it looks at (the next cell
    # of the previous image) to the output, and the output layer starts as a copy of the input embedding,
    # so the untrained model already predicts "the same cell as in the previous image": the copy every
    # visual task starts from (next frame, next view, and the query's layout in an analogy's answer).
    # The value is the copy's weight in the residual stream (init_grid_copy); 0 = off.
    grid_copy: float = 0.0

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by "
                             f"num_attention_heads {self.num_attention_heads}")
        if self.num_key_value_heads and self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads {self.num_attention_heads} is not divisible by "
                             f"num_key_value_heads {self.num_key_value_heads}")
        if self.max_position_embeddings % TOKENS_PER_IMAGE:
            raise ValueError(f"max_position_embeddings must be a multiple of {TOKENS_PER_IMAGE}")
        if self.grid_heads and not (self.grid_rope and self.attention_bias):
            raise ValueError("grid_heads needs grid_rope: true and attention_bias: true")
        top = min(self.num_attention_heads, len(GRID_OFFSETS))
        if not 0 <= self.grid_heads <= top:
            raise ValueError(f"grid_heads {self.grid_heads} must be in 0..{top}")
        if self.grid_copy and not self.grid_heads:
            raise ValueError("grid_copy needs grid_heads >= 1")
        if self.grid_rope and self.rope_theta != ROPE_THETA:
            raise ValueError("rope_theta does not apply with grid_rope: true (its frequencies are fixed)")
        if self.grid_rope and self.head_dim < 2 * (GRID_HARMONICS + IMAGE_HARMONICS):
            raise ValueError(f"grid_rope needs head_dim >= {2 * (GRID_HARMONICS + IMAGE_HARMONICS)}, "
                             f"got {self.head_dim}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def rope_parameters(self) -> dict:
        if not self.grid_rope:
            return {"rope_type": "default", "rope_theta": self.rope_theta}
        return grid_rope_parameters(self.head_dim)

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
        with quiet_grid_rope(self.grid_rope):  # grid rope's factor: below 1 on purpose
            return LlamaConfig(
                vocab_size=self.vocab_size,
                hidden_size=self.hidden_size,
                intermediate_size=self.intermediate_size,
                num_hidden_layers=self.num_hidden_layers,
                num_attention_heads=self.num_attention_heads,
                num_key_value_heads=self.num_key_value_heads or self.num_attention_heads,
                max_position_embeddings=self.max_position_embeddings,
                rms_norm_eps=self.rms_norm_eps,
                rope_parameters=self.rope_parameters,
                attention_bias=self.attention_bias,
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
        """A freshly initialised `LlamaForCausalLM` of this shape, with the token contract's generation
        defaults (`generation_config`)."""
        from transformers import LlamaForCausalLM

        with quiet_grid_rope(self.grid_rope):
            model = LlamaForCausalLM(self.to_hf())
        model.generation_config = generation_config(self.layout)
        if self.grid_heads:
            init_grid_heads(model, self)
        if self.grid_copy:
            init_grid_copy(model, self)
        return model


def generation_config(layout: TokenLayout):
    """HF GenerationConfig that keeps plain `generate()` (and servers that read generation_config.json: TGI,
    vLLM) inside the token contract: every id >= K suppressed, PAD = K, no BOS/EOS (ids 1 and 2 are image
    codes), sampling as `lvm prompt` does by default (lvm.generate.sampling.DEFAULTS: top-k 50, as the release
    does), one image per call by default."""
    from transformers import GenerationConfig

    from lvm.generate.sampling import DEFAULTS

    return GenerationConfig(do_sample=True, temperature=DEFAULTS.temperature, top_p=DEFAULTS.top_p,
                            top_k=DEFAULTS.top_k,
                            suppress_tokens=list(range(layout.codebook_size, layout.vocab_size)),
                            pad_token_id=layout.pad_id, bos_token_id=None, eos_token_id=None,
                            max_new_tokens=layout.tokens_per_image)


def grid_rope_parameters(head_dim: int) -> dict:
    """HF `rope_parameters` of grid rope. HF's inv_freq_i = theta**(-2i/head_dim) / factor: theta =
    2**(head_dim/2) halves the frequency from pair to pair and factor 1/pi starts it at pi, so pair i
    turns by pi/2**i per token (period 2**(i+1) tokens)."""
    return {"rope_type": "linear", "rope_theta": 2.0 ** (head_dim // 2), "factor": 1 / math.pi}


GRID_HARMONICS = 8  # rope pairs whose period divides one image (2, 4, ..., 256 tokens): the grid cell
GRID_ROW = 16  # tokens per row of the 16 x 16 code grid
IMAGE_HARMONICS = 4  # the next pairs (periods 2, 4, 8, 16 images): which earlier image, in a 16-image context
# What grid head j looks at, as offsets back from the query (which predicts the token one ahead of it):
# the next cell in the image 1 back, in the image 2 back (an analogy's last example answer), the cell above
# the next one in this image; further heads look further back.
GRID_OFFSETS = (TOKENS_PER_IMAGE - 1, 2 * TOKENS_PER_IMAGE - 1, GRID_ROW - 1) + tuple(
    k * TOKENS_PER_IMAGE - 1 for k in range(3, 16))
GRID_SCORE = 4.0  # attention logit per harmonic: a wrong offset scores at least 2 * 4 lower (e^-8)


@torch.no_grad()
def init_grid_heads(model, cfg: ModelConfig) -> None:
    """Make head j (< cfg.grid_heads) of every layer attend, whatever the content, GRID_OFFSETS[j] tokens
    back: the next token's grid cell in the previous image, in the one before, the cell above it, ...

    With grid rope, the score of a query/key pair is sum_i |q_i||k_i| cos(w_i offset + phase_i), and pair i
    turns by pi / 2**i per token: the pairs are the binary digits of the offset. The bias terms set a
    constant q and k on the first GRID_HARMONICS + IMAGE_HARMONICS pairs (cell and image), phased to peak
    together at the head's offset. Scores are summed then exponentiated, so the peak is the product of
    one peak per digit: sharp (every other offset in a 16-image context has a wrong digit). Content
    still enters through the weights, and training moves the biases as any weight.
    """
    hd = cfg.head_dim
    inv_freq = model.model.rotary_emb.inv_freq.float()
    r = math.sqrt(GRID_SCORE * math.sqrt(hd))  # |q||k| / sqrt(hd) = GRID_SCORE per harmonic
    group = cfg.num_attention_heads // (cfg.num_key_value_heads or cfg.num_attention_heads)
    for layer in model.model.layers:
        att = layer.self_attn
        for h in range(cfg.grid_heads):
            q0, k0 = h * hd, (h // group) * hd  # with GQA the head's key is its group's
            offset = GRID_OFFSETS[h]
            for i in range(GRID_HARMONICS + IMAGE_HARMONICS):
                phase = -offset * inv_freq[i].item()
                # HF rotate-half pairs dim i with dim i + hd/2 (real and imaginary parts).
                att.k_proj.bias[k0 + i] = r
                att.k_proj.bias[k0 + hd // 2 + i] = 0.0
                att.q_proj.bias[q0 + i] = r * math.cos(phase)
                att.q_proj.bias[q0 + hd // 2 + i] = r * math.sin(phase)


GRID_COPY_LOGIT = 3.0  # scale of the output layer copied from the embedding: the copied token's logit margin


@torch.no_grad()
def init_grid_copy(model, cfg: ModelConfig) -> None:
    """Give layer 0's grid head 0 (the next cell of the previous image, `init_grid_heads`) an OV circuit that
    passes the looked-at token's (normalised) embedding through a random orthonormal projection P into the
    residual stream with weight `cfg.grid_copy`, and start the output layer as GRID_COPY_LOGIT x the input
    embedding: logits ~ E . P^T P E[prev] peak at the previous image's token. Training then changes the
    copy into each task's mapping. No effect on the checkpoint format (plain weights)."""
    hd, d = cfg.head_dim, cfg.hidden_size
    g = torch.Generator().manual_seed(0)
    p = torch.linalg.qr(torch.randn(d, hd, generator=g))[0].T  # (hd, d), orthonormal rows
    att = model.model.layers[0].self_attn
    # The head's share of the stream: |P n(e)| ~ sqrt(hd) for a normalised input of norm sqrt(d).
    att.v_proj.weight[:hd] = p
    att.v_proj.bias[:hd] = 0.0
    att.o_proj.weight[:, :hd] = p.T * cfg.grid_copy
    emb = model.model.embed_tokens.weight
    if not cfg.tie_word_embeddings:
        model.lm_head.weight.copy_(emb * GRID_COPY_LOGIT)


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


def is_grid_rope(hf) -> bool:
    """Whether an HF Llama config (the object, or its config.json as a dict) has grid rope's parameters."""
    get = hf.get if isinstance(hf, dict) else lambda key: getattr(hf, key, None)
    try:
        head_dim = get("hidden_size") // get("num_attention_heads")
    except (TypeError, ZeroDivisionError):
        return False
    return dict(get("rope_parameters") or {}) == grid_rope_parameters(head_dim)


@contextlib.contextmanager
def hf_errors_only():
    """Inside, transformers' logger lets only errors through; its level is restored after."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(was)


def quiet_grid_rope(grid: bool = True):
    """transformers warns wherever a config with grid rope is built, loaded or saved: a linear rope factor
    below 1 is unusual to it, and grid rope's 1/pi (`grid_rope_parameters`) is meant. When `grid`, only
    errors pass inside: by level, not by the warning's text, so a reworded warning stays quiet too
    (tests/test_model.py guards it); a config without grid rope keeps every warning."""
    return hf_errors_only() if grid else contextlib.nullcontext()


def save_hf(model, out, progress: bool = False, **kw) -> None:
    """`model.save_pretrained(out, **kw)` without its grid rope warning, and without HF's progress bar unless
    `progress` (a checkpoint's one-shard save would print one each time)."""
    with contextlib.nullcontext() if progress else quiet_hf_progress(), quiet_grid_rope(is_grid_rope(model.config)):
        model.save_pretrained(out, **kw)


def model_config_from_hf(hf) -> ModelConfig:
    """The ModelConfig describing an existing HF Llama config (for --init-from and saved runs)."""
    rope, grid = dict(getattr(hf, "rope_parameters", None) or {}), is_grid_rope(hf)
    return ModelConfig(hidden_size=hf.hidden_size, intermediate_size=hf.intermediate_size,
                       num_hidden_layers=hf.num_hidden_layers, num_attention_heads=hf.num_attention_heads,
                       num_key_value_heads=hf.num_key_value_heads, codebook_size=TokenLayout.from_vocab_size(hf.vocab_size).codebook_size,
                       max_position_embeddings=hf.max_position_embeddings, rms_norm_eps=hf.rms_norm_eps,
                       rope_theta=ROPE_THETA if grid else
                       float(rope.get("rope_theta") or getattr(hf, "rope_theta", None) or ROPE_THETA),
                       grid_rope=grid,
                       attention_bias=bool(getattr(hf, "attention_bias", False)),
                       initializer_range=hf.initializer_range, tie_word_embeddings=hf.tie_word_embeddings)
