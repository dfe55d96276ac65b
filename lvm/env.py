"""What `lvm env` prints: the facts a bug report needs and what the device/precision policy picks here."""

from __future__ import annotations

import os
import platform


def kernels_status() -> str:
    """Whether the CPU decode kernels are built for this CPU (without building them)."""
    from lvm.generate import kernels

    if os.environ.get("LVM_KERNELS", "1") == "0":
        return "off (LVM_KERNELS=0)"
    built = kernels.built_path()
    return f"built ({built})" if built else "not built yet (compiled on first generation, ~40 s)"


def report() -> str:
    import torch
    import transformers

    import lvm
    from lvm_base.hardware import detect, resolve

    hw = detect()
    lines = [
        f"lvm {lvm.__version__}, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"python {platform.python_version()} on {platform.system()} {platform.machine()}",
        f"CPU: {hw.cpu_summary()}",
        f"CPU threads: torch {torch.get_num_threads()} of {os.cpu_count()} logical cores",
    ]
    env = [f"{k}={os.environ[k]}" for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "OMP_NUM_THREADS",
                                             "CUDA_VISIBLE_DEVICES", "LVM_KERNELS") if k in os.environ]
    if env:
        lines.append("environment: " + " ".join(env))
    if hw.gpus:
        for g in hw.gpus:
            lines.append(f"GPU {g.index}: {g.name}, {g.memory_gb:.1f} GiB, compute capability "
                         f"{g.capability[0]}.{g.capability[1]}")
    else:
        lines.append("GPUs: none visible" + (" (this torch build has no CUDA)" if torch.version.cuda is None else ""))
    if hw.mps:
        lines.append("Apple MPS: available")
    for purpose in ("inference", "training"):
        p = resolve("auto", "auto", purpose, hw)
        lines.append(f"auto for {purpose}: device {p.device}, precision {p.precision}")
    lines.append(f"CPU decode kernels: {kernels_status()}")
    return "\n".join(lines)
