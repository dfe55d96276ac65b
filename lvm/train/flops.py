"""Model FLOPs of training steps and the device's measured matmul peak, for MFU.

Model FLOPs count only useful work: 6 * (matmul parameters) per token (forward 2, backward 4) plus causal
attention, 6 * n_layers * hidden * n^2 for a sequence of n tokens (QK^T and AV, half the square each).
Padding and the masked-out part of packed rows are not counted, so MFU is comparable between a packed
and a padded loop that see the same sequences.
"""

from __future__ import annotations

import time


def _linears(hf_config) -> list[tuple[int, int, int]]:
    """(in, out, how many in the model) of each linear layer kind: q, o, k, v, gate, up, down, lm_head."""
    d, f, L, V = (hf_config.hidden_size, hf_config.intermediate_size, hf_config.num_hidden_layers,
                  hf_config.vocab_size)
    kv = hf_config.num_key_value_heads * (d // hf_config.num_attention_heads)
    return [(d, d, 2 * L), (d, kv, 2 * L), (d, f, 2 * L), (f, d, L), (d, V, 1)]


def matmul_params(hf_config) -> int:
    return sum(i * o * n for i, o, n in _linears(hf_config))  # the embedding lookup is not a matmul


def train_flops(hf_config, seq_lens) -> float:
    """Model FLOPs of one forward+backward over sequences of the given lengths."""
    n_tok = sum(seq_lens)
    attn = 6 * hf_config.num_hidden_layers * hf_config.hidden_size * sum(n * n for n in seq_lens)
    return 6.0 * matmul_params(hf_config) * n_tok + attn


def linear_shapes(hf_config) -> list[tuple[int, int]]:
    """(in, out) features of each distinct linear layer of the model."""
    return list(dict.fromkeys((i, o) for i, o, _ in _linears(hf_config)))


def measure_matmul_peak(dtype=None, device: str = "cpu", n: int = 2048, seconds: float = 1.0,
                        linears: list[tuple[int, int]] = ()) -> float:
    """Best observed FLOP/s of matmuls in `dtype` on `device` (the MFU denominator).

    A square product's size grows from 256 up to `n` while one product takes under a tenth of `seconds`,
    so a dtype the hardware only emulates (bf16 on an AVX2 CPU, orders of magnitude slower) is still
    measured, in about `seconds`. `linears` ((in, out) features, linear_shapes) adds the three products of
    each layer's training step (forward, grad of the input, grad of the weight) with a growing token count,
    in about `seconds` more: an emulated dtype's speed depends on the shape (bf16 on an AVX2 CPU can run a
    thin product such as 512x8192 @ 8192x32 faster than any square one), and a peak below what the model's
    own products reach would put MFU over 100%.
    """
    import torch

    dtype = dtype or torch.bfloat16
    from lvm_base.hardware import synchronize

    def timed(a, b) -> float:
        t = time.perf_counter()
        a @ b
        synchronize(device)
        return time.perf_counter() - t

    def best(shape, limit: int, budget: float) -> float:
        """Best FLOP/s of an (m, k, n) product whose None dimensions grow from 256."""
        size = min(256, limit)
        while True:
            m, k, nn = (size if x is None else x for x in shape)
            a = torch.randn(m, k, device=device).to(dtype)
            b = torch.randn(k, nn, device=device).to(dtype)
            timed(a, b)  # warm-up: kernel selection, packing buffers
            dt = timed(a, b)
            if size >= limit or dt > budget / 10:
                break
            size *= 2
        flops, t_end = 2 * m * k * nn, time.perf_counter() + budget
        top = flops / dt
        while time.perf_counter() < t_end:
            top = max(top, flops / timed(a, b))
        return top

    peak = best((None, None, None), n, seconds)
    # tokens x in @ in x out (forward), tokens x out @ out x in (grad of the input), out x tokens @ tokens x in
    shapes = [p for i, o in linears for p in ((None, i, o), (None, o, i), (o, None, i))]
    for shape in shapes:
        peak = max(peak, best(shape, n, seconds / len(shapes)))
    return peak
