"""Model FLOPs of training steps and the device's measured matmul peak, for MFU.

Model FLOPs count only useful work: 6 * (matmul parameters) per token (forward 2, backward 4) plus causal
attention, 6 * n_layers * hidden * n^2 for a sequence of n tokens (QK^T and AV, half the square each).
Padding and the masked-out part of packed rows are not counted, so MFU is comparable between a packed
and a padded loop that see the same sequences.
"""

from __future__ import annotations

import time


def matmul_params(hf_config) -> int:
    d, f, L, V = (hf_config.hidden_size, hf_config.intermediate_size, hf_config.num_hidden_layers,
                  hf_config.vocab_size)
    kv = hf_config.num_key_value_heads * (d // hf_config.num_attention_heads)
    per_layer = d * d * 2 + d * kv * 2 + 3 * d * f  # q, o, k, v, gate/up/down
    return L * per_layer + d * V  # + lm_head (the embedding lookup is not a matmul)


def train_flops(hf_config, seq_lens) -> float:
    """Model FLOPs of one forward+backward over sequences of the given lengths."""
    n_tok = sum(seq_lens)
    attn = 6 * hf_config.num_hidden_layers * hf_config.hidden_size * sum(n * n for n in seq_lens)
    return 6.0 * matmul_params(hf_config) * n_tok + attn


def measure_matmul_peak(dtype=None, device: str = "cpu", n: int = 2048, seconds: float = 1.0) -> float:
    """Best observed FLOP/s of a square matmul in `dtype` on `device` (the MFU denominator).

    The size grows from 256 up to `n` while one product takes under a tenth of `seconds`, so a dtype the
    hardware only emulates (bf16 on an AVX2 CPU, orders of magnitude slower) is still measured, in about
    `seconds`.
    """
    import torch

    dtype = dtype or torch.bfloat16
    from tokenizer.common.hardware import synchronize

    sync = lambda: synchronize(device)  # noqa: E731

    def timed(a, b) -> float:
        t = time.perf_counter()
        a @ b
        sync()
        return time.perf_counter() - t

    size = min(256, n)
    while True:
        a = torch.randn(size, size, device=device).to(dtype)
        b = torch.randn(size, size, device=device).to(dtype)
        timed(a, b)  # warm-up: kernel selection, packing buffers
        dt = timed(a, b)
        if size >= n or dt > seconds / 10:
            break
        size *= 2
    best, t_end = 2 * size ** 3 / dt, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        best = max(best, 2 * size ** 3 / timed(a, b))
    return best
