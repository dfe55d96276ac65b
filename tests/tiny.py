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
