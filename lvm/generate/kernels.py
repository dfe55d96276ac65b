"""The CPU decode kernels (lvm/generate/csrc/: decode.cpp, attend.cpp), compiled once per machine and cached.

`load()` returns the compiled module, or None when it cannot be had (no C++ compiler, a failed build, or
LVM_KERNELS=0), in which case the engine decodes with plain PyTorch ops (slower, same results up to
rounding). The build, a C++ compile, runs the first time only: torch.utils.cpp_extension caches it under
$TORCH_EXTENSIONS_DIR (default ~/.cache/torch_extensions), keyed by the source, the flags and this CPU's
instruction set. The code is compiled for the ISA torch itself dispatches to: -march=native where torch
runs AVX-512 (or on non-x86 CPUs), -march=x86-64-v3 (AVX2+FMA+F16C) where torch runs AVX2, as it does on
an AVX2-only CPU or under ATEN_CPU_CAPABILITY=avx2, so that simulation measures AVX2 code.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
import time
from pathlib import Path

_CSRC = Path(__file__).parent / "csrc"
_SOURCES = [_CSRC / "decode.cpp", _CSRC / "attend.cpp"]  # and the header they share, vec.h
_module = None
_tried = False
_why_not: str | None = None


def _cpu_tag() -> str:
    """A short hash of the CPU's feature flags (a binary built with -march=native is only good for them) and
    of torch's version (an extension is built against one torch's ABI; torch names the build directory by
    Python and CUDA only, so two venvs with other torch versions would share it, and its lock)."""
    import torch

    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = line
                break
    except OSError:
        pass
    return hashlib.sha1(f"{platform.machine()} {flags} {torch.__version__}".encode()).hexdigest()[:8]


def march() -> str:
    """The -march the kernels are built with: what torch's own CPU kernels use here (module doc)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return "native"
    from lvm_base.hardware import detect

    cap = detect().cpu_capability.upper()  # torch's dispatch level, which honours ATEN_CPU_CAPABILITY
    if cap == "AVX2":
        return "x86-64-v3"
    if cap == "DEFAULT":
        return "x86-64-v2"
    return "native"


def _name() -> str:
    tag = march().replace("-", "")
    return f"lvm_decode_{_cpu_tag()}" if tag == "native" else f"lvm_decode_{_cpu_tag()}_{tag}"


def _builder():
    import logging

    # Importing the builder logs "No CUDA runtime is found" on CPU machines: true and irrelevant here.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils import cpp_extension

    return cpp_extension


def _build_dir() -> Path:
    return Path(_builder()._get_build_directory(_name(), verbose=False))


def load(verbose: bool = True):
    """The compiled kernels, building them on first use; None if unavailable (see `why_not()`)."""
    global _module, _tried, _why_not
    if _tried:
        return _module
    _tried = True
    if os.environ.get("LVM_KERNELS", "1") == "0":
        _why_not = "LVM_KERNELS=0"
        return None
    if sys.platform == "win32":
        _why_not = "not built on Windows"
        return None
    try:
        import ninja  # the pip package: torch's builder needs the `ninja` binary on PATH

        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
    except ImportError:
        pass
    cpp_extension = _builder()
    name = _name()
    build_dir = _build_dir()
    lock = build_dir / "lock"
    if lock.exists() and time.time() - lock.stat().st_mtime > 600:
        # A build killed hard (SIGKILL) leaves torch's lock file behind, and every later load would wait on it
        # forever; a build takes under a minute, so an old lock is a dead one.
        lock.unlink(missing_ok=True)
    fresh = not any(build_dir.glob("*.so"))
    if fresh and verbose:
        print("lvm: compiling the CPU decode kernels (once per machine, ~40 s) ...", file=sys.stderr, flush=True)
    try:
        _module = cpp_extension.load(
            name=name, sources=[str(f) for f in _SOURCES],
            extra_cflags=["-O3", f"-march={march()}", "-ffast-math", "-fopenmp"], extra_ldflags=["-fopenmp"],
            verbose=False)
    except Exception as e:  # no compiler, no ninja, a compile error: decode without them
        lines = str(e).strip().splitlines()
        _why_not = f"build failed ({lines[-1] if lines else type(e).__name__})"
        if verbose:
            print(f"lvm: CPU decode kernels unavailable: {_why_not}; decoding with plain PyTorch ops",
                  file=sys.stderr, flush=True)
        _module = None
    return _module


def built_path() -> str | None:
    """The compiled module's file for this CPU if a build is cached, without building (for `lvm env`)."""
    found = sorted(_build_dir().glob("*.so"))
    return str(found[0]) if found else None


def bf16_dots(kn, cache_dtype, head_dim: int) -> bool:
    """Whether the kernels `kn` read a KV cache of `cache_dtype` and `head_dim` with bf16 dot products (the query
    and the softmax weights rounded to bf16): a bf16 cache of whole pairs of 16-lane vectors on a CPU that has
    them (attend.cpp, `dot`)."""
    import torch

    return kn is not None and bool(kn.dot_bf16) and cache_dtype == torch.bfloat16 and head_dim % 32 == 0


def why_not() -> str | None:
    """Why `load()` returned None (None if it has not been called or succeeded)."""
    return _why_not
