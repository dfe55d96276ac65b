"""Datasheet figures of common NVIDIA GPUs: dense bf16 tensor-core peak and memory bandwidth.

MFU is conventionally quoted against the datasheet peak, and a decoding step's roofline against the
datasheet bandwidth; the benchmarks also measure both on the device (a big matmul, a big copy), which
read lower. Names are matched against `torch.cuda.get_device_name()` (e.g. "NVIDIA H100 80GB HBM3").
"""

from __future__ import annotations

# (substrings that must all occur in the name, upper-cased) -> (dense bf16 FLOP/s, memory bytes/s).
# The first match wins, so the more specific names come first.
_TABLE: list[tuple[tuple[str, ...], tuple[float, float]]] = [
    (("GH200",), (989e12, 4.0e12)),
    (("H200",), (989e12, 4.8e12)),
    (("H100", "NVL"), (835e12, 3.9e12)),
    (("H100", "PCIE"), (756e12, 2.0e12)),
    (("H100",), (989e12, 3.35e12)),  # SXM ("H100 80GB HBM3")
    (("H800",), (989e12, 3.35e12)),
    (("A100", "80GB", "PCIE"), (312e12, 1.935e12)),
    (("A100", "80GB"), (312e12, 2.039e12)),
    (("A100",), (312e12, 1.555e12)),  # 40 GB
    (("L40S",), (362e12, 0.864e12)),
    (("L40",), (181e12, 0.864e12)),
    (("L4",), (121e12, 0.3e12)),
    (("A10G",), (70e12, 0.6e12)),
    (("A10",), (125e12, 0.6e12)),
    (("RTX 4090",), (165e12, 1.008e12)),
]


def nominal(name: str) -> tuple[float | None, float | None]:
    """(dense bf16 peak FLOP/s, memory bandwidth bytes/s) of the GPU called `name`; (None, None) if unknown."""
    up = name.upper()
    for keys, figures in _TABLE:
        if all(k in up for k in keys):
            return figures
    return None, None
