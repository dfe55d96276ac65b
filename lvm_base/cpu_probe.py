"""Whether bf16 pays on this CPU: a measured answer, kept per machine (used by `hardware.detect`).

A CPU flag says that bf16 is computed natively, not that it is faster. With AMX, bf16 matmuls and a bf16
autocast training step beat fp32 clearly; with AVX512-BF16 alone (no AMX, or oneDNN capped below it) every
weight, activation and gradient is also converted on the way, and bf16 can be slower than fp32. So where the
flags say native, `auto` times a linear layer's matmuls (forward and both gradients, at the demo
transformer's shapes) in both precisions and keeps bf16 only where they are clearly faster. It times the
big matmuls alone because they separate the two kinds of CPU cleanly, while a whole block (attention and
norms included) varies too much from one timing to the next to decide anything.

The probe takes under a second, once per machine: its verdict is cached as JSON under
`$XDG_CACHE_HOME/lvm` (default ~/.cache/lvm), keyed by everything that decides the kernels torch runs (CPU
name and flags, torch's dispatch level, ONEDNN_MAX_CPU_ISA, torch version). It times one thread because one
thread reads the same on an idle and on a busy machine, where several threads' ratio swings with whatever
else runs. A file lock makes the ranks of a multi-process job on one machine share one measurement, so they
pick the same precision. The measurements behind these choices: docs/results.md (Hardware and precision).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

# bf16's matmuls must beat fp32's by this factor (fp32 time / bf16 time) to be chosen: the conversions
# around them cost a training step a share of the gain, and a near tie goes to fp32, which is exact.
MIN_SPEEDUP = 1.3
CACHE_NAME = "cpu_precision.json"


def cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lvm" / CACHE_NAME


def machine_key(cpu_name: str, cpu_flags, cpu_capability: str, onednn_max_isa: str | None) -> str:
    import torch

    return "|".join([cpu_name, ",".join(sorted(cpu_flags)), cpu_capability, onednn_max_isa or "-",
                     f"torch={torch.__version__}"])


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


def measure_speedup(tokens: int = 4096, width: int = 256, hidden: int = 688, reps: int = 5) -> float:
    """fp32 time / bf16 time of the three matmuls of a linear layer's training step (forward, both
    gradients) at a small transformer's shapes on one thread, the best of `reps` interleaved timings each
    (interleaving shares any background load between the two)."""
    import torch

    g = torch.Generator().manual_seed(0)
    x, w, dy = (torch.randn(*s, generator=g) for s in ((tokens, width), (width, hidden), (tokens, hidden)))
    x16, w16, dy16 = x.bfloat16(), w.bfloat16(), dy.bfloat16()

    def once(a, b, d) -> float:
        t = time.perf_counter()
        a @ b, d @ b.T, a.T @ d
        return time.perf_counter() - t

    # One thread: a multi-threaded kernel waits at its barrier for any thread the OS has descheduled, so on
    # a busy machine two-thread timings measure the scheduler; one thread keeps the ISA's difference.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        once(x, w, dy), once(x16, w16, dy16)  # first calls pick and warm the kernels
        fp32, bf16 = [], []
        for _ in range(reps):
            fp32.append(once(x, w, dy))
            bf16.append(once(x16, w16, dy16))
    finally:
        torch.set_num_threads(old)
    return min(fp32) / max(min(bf16), 1e-9)
