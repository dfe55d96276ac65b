"""The model card (README.md) that every saved `lvm train` checkpoint carries: what the model is, its token
contract, how it was trained and how to prompt it, for whoever finds the directory (or its hub copy)."""

from __future__ import annotations

from lvm.generate.sampling import DEFAULTS
from lvm.tokens import TokenLayout


def model_card(cfg, state: dict, hf_config, n_params: int) -> str:
    """Markdown with a Hugging Face metadata header, for a checkpoint directory's README.md."""
    lay = TokenLayout.from_model_config(hf_config)
    shards = ", ".join(str(s) for s in cfg.data.source_list()) or "-"
    return f"""---
library_name: transformers
pipeline_tag: text-generation
tags: [lvm, large-vision-model, vqgan, visual-sequences]
---

# LVM transformer ({n_params / 1e6:.1f}M parameters), step {state['step']}

A LLaMA-style causal transformer (`LlamaForCausalLM`) over visual tokens, trained with next-token loss by
`lvm train`. It reads and writes images only through a VQGAN tokenizer with **K = {lay.codebook_size}** codes
and {lay.tokens_per_image} codes per image; it is not a text model.

| | |
|---|---|
| layers / hidden / heads | {hf_config.num_hidden_layers} / {hf_config.hidden_size} / {hf_config.num_attention_heads} |
| vocabulary | {lay.vocab_size} = {lay.codebook_size} image codes + reserved ids (PAD = {lay.pad_id}) |
| context | {hf_config.max_position_embeddings} tokens = {lay.images_per_context} images |

## Token contract
A visual sequence is its images' codes, {lay.tokens_per_image} per image, in order, with no BOS/EOS; image i
sits at positions {lay.tokens_per_image}*i ... Ids >= {lay.codebook_size} are never sampled:
`generation_config.json` suppresses them, sets `pad_token_id` {lay.pad_id}, no bos/eos, and samples with top-k
{DEFAULTS.top_k} as the released LVM does, so plain `generate()` stays inside the contract.

## Training
{state['step']} optimizer steps, {state.get('tokens_seen', 0):,} tokens seen, {state.get('seq_len', '-')} tokens per
packed row; AdamW lr {cfg.lr:g} -> {cfg.min_lr:g} (warmup {cfg.warmup_steps}, cosine), weight decay
{cfg.weight_decay:g}, precision {cfg.precision}. Data: {shards}. The run's full config is `config.yaml` in
its output folder.

## Prompting
With the tokenizer it was trained on (`lvm prompt --help`):

    lvm prompt --model THIS_DIR --tokenizer TOKENIZER --prompt prompts/rotation.yaml --out out/
    lvm eval perplexity eval.jsonl --model THIS_DIR --tokenizer TOKENIZER

Sequential prompts show frames and continue them; analogies show pairs A A' ... and a query B, the model
answers B'. Feed raw image codes (no BOS) and generate {lay.tokens_per_image} tokens per new image.
"""
