"""Tiny checkpoints the tests make for themselves."""

import torch


def save_tiny_tokenizer(path, codebook_size: int = 64, seed: int = 0):
    """A random 32 px VQGAN with f = 2 (16 x 16 = 256 codes per image, as the token contract wants) saved at
    `path`; returns `path`."""
    from tokenizer import VQGAN, VQGANConfig

    torch.manual_seed(seed)
    VQGAN(VQGANConfig(resolution=32, hidden_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                      attn_resolutions=(), mid_attention=False, z_channels=8, embed_dim=8,
                      codebook_size=codebook_size, precision="fp32")).save_pretrained(path)
    return path


def tiny_decoder(codebook_size: int = 64, peaked: bool = False):
    """A random 2-layer GQA Llama with attention biases, for engine-vs-HF checks (seed 0): its zero biases
    are drawn so that they matter; `peaked` sharpens the next-token distributions (drafts then are
    sometimes right, often not)."""
    from lvm.model import ModelConfig

    torch.manual_seed(0)
    cfg = ModelConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, codebook_size=codebook_size, max_position_embeddings=256,
                      attention_bias=True)
    m = cfg.build().eval()
    with torch.no_grad():
        for p in m.parameters():
            if p.ndim == 1 and p.abs().sum() == 0:
                p.normal_(0, 0.5)
        if peaked:
            m.lm_head.weight.mul_(8)
    return m

