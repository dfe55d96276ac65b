"""Whether bf16 pays on this CPU: a measured answer, kept per machine (used by `hardware.detect`).

A CPU flag says that bf16 is computed natively, not that it is faster. With AMX, a small transformer's
training step in bf16 autocast runs ~1.7x faster than in fp32; with AVX512-BF16 alone (no AMX) the same step
can run 2x slower, since the matmuls gain little and every weight, activation and gradient is converted on
the way. So where the flags say native, `auto` times one causal transformer block (norm, attention, SiLU
MLP, backward) in fp32 and in bf16 autocast, and keeps bf16 only where it is clearly faster.

The probe takes about a second, once per machine: its verdict is cached as JSON under
`$XDG_CACHE_HOME/lvm` (default ~/.cache/lvm), keyed by everything that decides the kernels torch runs (CPU
name and flags, torch's dispatch level, ONEDNN_MAX_CPU_ISA, threads, torch version). A file lock makes the
ranks of a multi-process job on one machine share one measurement, so they pick the same precision.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

# bf16 must beat fp32 by this factor (fp32 time / bf16 time) to be chosen: a near tie goes to fp32, which is
# exact and whose speed does not swing with the conversions' share of a model's work.
MIN_SPEEDUP = 1.15
CACHE_NAME = "cpu_precision.json"


def cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lvm" / CACHE_NAME


def machine_key(cpu_name: str, cpu_flags, cpu_capability: str, onednn_max_isa: str | None, threads: int) -> str:
    import torch

    return "|".join([cpu_name, ",".join(sorted(cpu_flags)), cpu_capability, onednn_max_isa or "-",
                     f"threads={threads}", f"torch={torch.__version__}"])


def bf16_speedup(key: str, measure=None) -> float:
    """fp32 time / bf16 time of the probe on this machine: read from the cache, else measured and stored.
    `measure` (tests) replaces the timing; an unreadable cache is measured again and rewritten."""
    import fcntl

    path = cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the first rank measures, the others wait and read its answer
        table = _read(path)
        if key in table:
            return float(table[key])
        ratio = float((measure or measure_speedup)())
        table[key] = round(ratio, 3)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(table, indent=1, sort_keys=True))
        os.replace(tmp, path)
        return ratio


def _read(path: Path) -> dict:
    try:
        table = json.loads(path.read_text())
        return {k: v for k, v in table.items() if isinstance(v, (int, float))} if isinstance(table, dict) else {}
    except (OSError, ValueError):
        return {}


def measure_speedup(tokens: int = 1024, width: int = 256, heads: int = 4, reps: int = 4) -> float:
    """fp32 time / bf16-autocast time of a forward and backward pass of one transformer block, the best of
    `reps` interleaved timings each (interleaving shares any background load between the two)."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    hidden = width * 11 // 4

    def w(*shape):
        return (torch.randn(*shape, generator=g) / shape[-1] ** 0.5).requires_grad_()

    params = [w(3 * width, width), w(width, width), w(hidden, width), w(hidden, width), w(width, hidden)]
    x = torch.randn(1, tokens, width, generator=g)

    def block():
        qkv_w, o_w, gate_w, up_w, down_w = params
        h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
        q, k, v = F.linear(h, qkv_w).view(1, tokens, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(1, tokens, width)
        y = x + F.linear(a, o_w)
        h = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + 1e-6)
        y = y + F.linear(F.silu(F.linear(h, gate_w)) * F.linear(h, up_w), down_w)
        return y.float().pow(2).mean()

    def once(bf16: bool) -> float:
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = block()
        loss.backward()
        for p in params:
            p.grad = None
        return time.perf_counter() - t

    once(False), once(True)  # first calls pick and warm the kernels
    fp32, bf16 = [], []
    for _ in range(reps):
        fp32.append(once(False))
        bf16.append(once(True))
    return min(fp32) / max(min(bf16), 1e-9)
