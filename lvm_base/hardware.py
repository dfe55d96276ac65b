"""The device and precision policy of every lvm command: one function, `resolve`, used by all packages.

    plan = resolve("auto", "auto", purpose="training")   # -> Plan(device=cpu, precision="fp32", ...)
    with plan.autocast():
        loss = model(x)

It lives in `tokenizer`, the bottom of the import graph, so the tokenizer, the data builders and `lvm`
all share it without `tokenizer` importing anything above it.

What `auto` picks:
- device: the GPU of this rank (`cuda:LOCAL_RANK`) when CUDA is available, else Apple's `mps`, else `cpu`.
- CPU precision: bf16 only where the CPU computes it natively, i.e. torch dispatches AVX-512 (or better)
  kernels, the CPU has AMX-BF16, AVX512-BF16 or AVX512-FP16, and oneDNN is allowed to use them, *and* where
  a sub-second timing of a transformer's matmuls shows bf16 clearly faster than fp32 on this machine (cached
  per machine; `cpu_probe` says why: AVX512-BF16 without AMX can train slower in bf16). Everywhere
  else auto picks fp32 (emulated bf16 is two orders of magnitude slower). The check honours
  `ATEN_CPU_CAPABILITY` and `ONEDNN_MAX_CPU_ISA`, so `ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`
  makes a newer CPU behave (and be judged) as AVX2.
- CUDA precision: bf16 on compute capability >= 8.0 (Ampere and later), else fp16 (training then uses a
  gradient scaler, which accelerate adds for "fp16").
- MPS precision: fp32 (its half-precision kernels cover too little of what training needs).

An explicit precision is obeyed; bf16 or fp16 on a CPU that lacks it natively prints one warning line.
Storage apart from compute (`with_storage`): CPU inference computing in fp32 under auto keeps big weights
and the KV cache in bf16 where the code reading them widens bf16 to fp32 itself (lvm's decode kernels).
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from dataclasses import dataclass, field, replace
from typing import Literal

from .errors import InputError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
Purpose = Literal["inference", "training"]

# oneDNN ISA names (ONEDNN_MAX_CPU_ISA) from which its bf16 kernels are native, and from which fp16 is.
_ONEDNN_ISAS = ["SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI",
                "AVX512_CORE_BF16", "AVX10_1_512", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX10_1_512_AMX",
                "AVX512_CORE_AMX_FP16", "AVX10_1_512_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2", "ALL"]
_BF16_FROM = _ONEDNN_ISAS.index("AVX512_CORE_BF16")
_FP16_FROM = _ONEDNN_ISAS.index("AVX512_CORE_FP16")


@dataclass(frozen=True)
class GPU:
    index: int
    name: str
    memory_gb: float
    capability: tuple[int, int]


@dataclass(frozen=True)
class Hardware:
    """What the policy looks at. `detect()` reads it from this machine; tests build their own."""

    cpu_name: str = "unknown CPU"
    cpu_capability: str = "DEFAULT"          # torch's dispatch level: DEFAULT, AVX2, AVX512 (env-honouring)
    cpu_flags: frozenset = frozenset()       # avx512_bf16, avx512_fp16, amx_bf16, ... (torch's cpuinfo names)
    onednn_max_isa: str | None = None        # ONEDNN_MAX_CPU_ISA, upper-cased, if set
    threads: int = 1
    gpus: tuple[GPU, ...] = ()
    mps: bool = False
    # fp32 time / bf16 time of cpu_probe's matmuls here; None = not measured (trust the flags)
    cpu_bf16_speedup: float | None = None

    @property
    def cpu_bf16_native(self) -> bool:
        return self._native(("amx_bf16", "avx512_bf16", "avx512_fp16"), _BF16_FROM)

    @property
    def cpu_bf16_pays(self) -> bool:
        """What auto picks bf16 on: native, and not measured slower than fp32 (cpu_probe.MIN_SPEEDUP)."""
        from .cpu_probe import MIN_SPEEDUP

        return self.cpu_bf16_native and (self.cpu_bf16_speedup is None or self.cpu_bf16_speedup >= MIN_SPEEDUP)

    @property
    def cpu_fp16_native(self) -> bool:
        return self._native(("amx_fp16", "avx512_fp16"), _FP16_FROM)

    def _native(self, flags, isa_from: int) -> bool:
        if self.cpu_capability.upper() not in ("AVX512", "AMX", "AVX512_BF16", "AVX512_VNNI"):
            return False  # torch's own kernels (norms, softmax, elementwise) would run the emulated path
        isa = self.onednn_max_isa
        return any(f in self.cpu_flags for f in flags) and not (
            isa and isa in _ONEDNN_ISAS and _ONEDNN_ISAS.index(isa) < isa_from)

    def cpu_summary(self) -> str:
        have = [f for f in ("avx2", "avx512_f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_fp16")
                if f in self.cpu_flags]
        isa = f", ONEDNN_MAX_CPU_ISA={self.onednn_max_isa}" if self.onednn_max_isa else ""
        bf16 = "native" if self.cpu_bf16_native else "emulated"
        if self.cpu_bf16_native and self.cpu_bf16_speedup is not None:
            bf16 += f", its matmuls {self.cpu_bf16_speedup:.2f}x fp32's speed"
        return (f"{self.cpu_name} (torch capability {self.cpu_capability}; {' '.join(have) or 'no SIMD flags'}"
                f"{isa}; bf16 {bf16})")


@functools.lru_cache(maxsize=1)
def detect() -> Hardware:
    """This machine's CPU, GPUs and MPS, read once per process."""
    import torch

    info = {}
    try:
        info = torch._C._cpu._get_cpu_capability()  # cpuinfo's flags: the CPU itself, not the env
    except Exception:  # older or non-x86 torch builds
        pass
    flags = frozenset(k for k, v in info.items() if v is True)
    name = str(info.get("cpu_name") or "")
    if not name or name == "AMD EPYC" or name == "unknown":
        name = _cpu_model_name() or name or "unknown CPU"
    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append(GPU(i, p.name, p.total_memory / 2 ** 30, (p.major, p.minor)))
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    hw = Hardware(cpu_name=name, cpu_capability=torch.backends.cpu.get_cpu_capability(), cpu_flags=flags,
                  onednn_max_isa=isa.upper() if isa else None, threads=torch.get_num_threads(),
                  gpus=tuple(gpus), mps=mps)
    if hw.cpu_bf16_native:
        hw = replace(hw, cpu_bf16_speedup=_measured_bf16_speedup(hw))
    return hw


def _measured_bf16_speedup(hw: Hardware) -> float:
    from . import cpu_probe

    key = cpu_probe.machine_key(hw.cpu_name, hw.cpu_flags, hw.cpu_capability, hw.onednn_max_isa)
    try:
        return cpu_probe.bf16_speedup(key)
    except OSError:  # no writable cache folder: measure for this process only
        return cpu_probe.measure_speedup()


def _cpu_model_name() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            return next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None)
    except OSError:
        return None


@dataclass(frozen=True)
class Plan:
    """Where and in what precision one job computes."""

    device: str                       # "cpu", "cuda:0", "mps"
    precision: str                    # "fp32", "bf16" or "fp16": what auto resolved to, or what was asked
    requested: tuple[str, str] = ("auto", "auto")
    notes: tuple[str, ...] = field(default=())
    storage: str = ""                 # inference: what weights and KV cache are kept in, where not `precision`

    @property
    def device_type(self) -> str:
        return self.device.split(":")[0]

    @property
    def dtype(self):
        import torch

        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.precision]

    @property
    def mixed_precision(self) -> str:
        """accelerate's name for it ("no" | "bf16" | "fp16")."""
        return "no" if self.precision == "fp32" else self.precision

    def autocast(self):
        """Autocast to the plan's dtype on its device, or nothing for fp32."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        import torch

        return torch.autocast(self.device_type, dtype=self.dtype)

    def describe(self) -> str:
        asked = "" if self.requested == ("auto", "auto") else f" (asked: device={self.requested[0]}, " \
                                                              f"precision={self.requested[1]})"
        store = f" ({self.storage} storage)" if self.storage else ""
        return f"{self.device} {self.precision}{store}{asked}"


_warned: set = set()


def _warn_once(key, text: str) -> None:
    if key not in _warned:
        _warned.add(key)
        print(f"warning: {text}", file=sys.stderr, flush=True)


def precision_name(precision) -> str:
    """The policy's name for a precision given as a name, an alias ("bfloat16", "half") or a torch dtype."""
    p = str(precision or "auto").strip().lower().removeprefix("torch.")
    return {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16", "no": "fp32"}.get(p, p)


def _device(device: str | None, hw: Hardware) -> str:
    d = (device or "auto").strip().lower()
    if d == "auto":
        if hw.gpus:
            return f"cuda:{env_int('LOCAL_RANK', 0) % len(hw.gpus)}"
        return "mps" if hw.mps else "cpu"
    if d == "cpu":
        return "cpu"
    if d.startswith("cuda"):
        if not hw.gpus:
            raise InputError(f"--device {device}: no CUDA GPU is visible here (torch.cuda.is_available() is "
                             "False); use --device cpu or auto")
        idx = d.partition(":")[2]
        if idx and (not idx.isdigit() or int(idx) >= len(hw.gpus)):
            raise InputError(f"--device {device}: this machine has {len(hw.gpus)} CUDA GPU(s) "
                             f"(cuda:0 .. cuda:{len(hw.gpus) - 1})")
        return f"cuda:{int(idx) if idx else env_int('LOCAL_RANK', 0) % len(hw.gpus)}"
    if d == "mps":
        if not hw.mps:
            raise InputError(f"--device {device}: Apple MPS is not available here; use --device cpu or auto")
        return "mps"
    raise InputError(f"--device {device}: expected auto, cpu, cuda, cuda:N or mps")


def resolve(device: str | None = "auto", precision: str | None = "auto", purpose: Purpose = "inference",
            hw: Hardware | None = None) -> Plan:
    """The device and precision for a job, from the user's choice (each "auto" by default) and the hardware.
    Raises InputError (one line) for a device that is not there or a precision that is not a choice.
    `purpose` matters only where training and inference differ (fp16 on old GPUs, see the module doc)."""
    launch_env()  # a launcher variable that is not a number ends here, before any work
    hw = hw or detect()
    p = precision_name(precision)
    if p not in PRECISIONS:
        raise InputError(f"--precision {precision}: expected one of {', '.join(PRECISIONS)}")
    dev = _device(device, hw)
    kind = dev.split(":")[0]
    notes: list[str] = []
    if p == "auto":
        if kind == "cuda":
            cap = hw.gpus[int(dev.split(":")[1])].capability
            p = "bf16" if cap >= (8, 0) else "fp16"
        elif kind == "mps":
            p = "fp32"
        else:
            p = "bf16" if hw.cpu_bf16_pays else "fp32"
    elif kind == "cpu" and p in ("bf16", "fp16"):
        native = hw.cpu_bf16_native if p == "bf16" else hw.cpu_fp16_native
        if not native:
            msg = (f"precision={p} on this CPU ({hw.cpu_capability}, no native {p}) runs emulated, about 100x "
                   f"slower than fp32; precision=auto avoids it")
            notes.append(msg)
            _warn_once(("cpu", p), msg)
        elif p == "bf16" and not hw.cpu_bf16_pays:
            msg = (f"precision=bf16 on this CPU runs matmuls at {hw.cpu_bf16_speedup:.2f}x fp32's "
                   f"speed; precision=auto picks fp32 here")
            notes.append(msg)
            _warn_once(("cpu", "slow-bf16"), msg)
    elif kind == "cuda" and p == "bf16" and hw.gpus[int(dev.split(":")[1])].capability < (8, 0):
        msg = "precision=bf16 on a GPU before compute capability 8.0 is emulated and slow; auto picks fp16"
        notes.append(msg)
        _warn_once(("cuda", p), msg)
    return Plan(device=dev, precision=p, requested=(device or "auto", precision or "auto"), notes=tuple(notes))


STORAGE_MIN_BYTES = 64 * 2 ** 20  # fp32 weights past the caches: decoding streams them from memory per token


def with_storage(plan: Plan, fp32_bytes: int, storage: str = "auto") -> Plan:
    """`plan` with the storage precision (module doc) of an inference whose fp32 weights take `fp32_bytes`. auto:
    bf16 on a CPU computing fp32 under auto once the weights pass the caches (decoding then is bound by bytes)."""
    s = precision_name(storage)
    if s == "auto":
        big = plan.device_type == "cpu" and plan.precision == "fp32" and fp32_bytes >= STORAGE_MIN_BYTES
        s = "bf16" if big and precision_name(plan.requested[1]) == "auto" else plan.precision
    if s not in PRECISIONS[1:]:
        raise InputError(f"storage precision {storage}: expected fp32, bf16 or fp16")
    return replace(plan, storage="" if s == plan.precision else s)


def env_int(name: str, default: int, lo: int = 0) -> int:
    """A launcher's integer variable (RANK, LOCAL_RANK, WORLD_SIZE, SLURM_PROCID, ...): `default` when unset,
    else a whole number >= `lo`; anything else is a one-line InputError (a rank cannot be guessed)."""
    raw = os.environ.get(name, "").strip()
    value = int(raw) if raw.isascii() and raw.isdigit() and len(raw) < 19 else None  # fits int64
    if raw and (value is None or value < lo):
        raise InputError(f"environment variable {name}={raw[:40]!r}: expected a whole number >= {lo}")
    return value if raw else default


def launch_env() -> tuple[int, int, int]:
    """(RANK, LOCAL_RANK, WORLD_SIZE) of a multi-process launch, checked; (0, 0, 1) outside one."""
    return env_int("RANK", 0), env_int("LOCAL_RANK", 0), env_int("WORLD_SIZE", 1, lo=1)


def free_memory(device) -> int | None:
    """Bytes a new allocation on `device` may take: CUDA's free memory; on a CPU half the available RAM (the
    rest is left to everything else); None (unknown) elsewhere."""
    import psutil  # comes with accelerate
    import torch

    kind = str(device).split(":")[0]
    if kind == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return psutil.virtual_memory().available // 2 if kind == "cpu" else None


def synchronize(device) -> None:
    """Wait for the device's queued work (timings, probes); nothing to wait for on a CPU."""
    import torch

    kind = str(device).split(":")[0]
    if kind == "cuda":
        torch.cuda.synchronize(device)
    elif kind == "mps":
        torch.mps.synchronize()


# ---- training ----

def make_accelerator(plan: Plan, **kwargs):
    """An accelerate Accelerator computing on `plan.device` in `plan.precision`, and the autocast context
    the caller wraps forward passes in where accelerate does not autocast itself (fp16 on the CPU). bf16/fp16
    are accelerate's mixed precision (fp16 with its gradient scaler on GPUs), whatever accelerate's config says."""
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    if AcceleratorState._shared_state and AcceleratorState().num_processes == 1:
        # Several runs in one process (tests, benchmarks) may differ in precision; accelerate keeps a
        # process-wide singleton, so drop it between single-process runs.
        AcceleratorState._reset_state()
    cpu = plan.device_type == "cpu"  # also what makes accelerate form a multi-process CPU group (gloo)
    if plan.device_type == "cuda" and env_int("WORLD_SIZE", 1, lo=1) == 1:
        torch.cuda.set_device(plan.device)  # a single process uses the GPU the plan names
    # accelerate's fp16 is GPU-only (on the CPU it would silently run fp32): autocast it here instead.
    cpu_fp16 = cpu and plan.precision == "fp16"
    accelerator = Accelerator(mixed_precision="no" if cpu_fp16 else plan.mixed_precision, cpu=cpu, **kwargs)
    return accelerator, plan.autocast() if cpu_fp16 else contextlib.nullcontext()


# ---- reading the two flags of every computing command (lvm/commands/hardware_args.py) ----

def parse_precisions(text: str) -> list[str]:
    """A benchmark's comma list of precisions (--precision with many=True): each checked, duplicates dropped."""
    out = [p.strip().lower() for p in (text or "").split(",") if p.strip()] or ["auto"]
    if any(p not in PRECISIONS for p in out):
        raise InputError(f"--precision {text}: expected a comma list of {', '.join(PRECISIONS)}")
    return list(dict.fromkeys(out))


def apply_args(cfg, args) -> None:
    """A command's --device/--precision override its config's fields unless they are left at auto."""
    for name in ("device", "precision"):
        value = getattr(args, name, "auto")
        if value != "auto":
            setattr(cfg, name, value)


def from_args(args, purpose: Purpose = "inference") -> Plan:
    return resolve(getattr(args, "device", "auto"), getattr(args, "precision", "auto"), purpose)


class cpu_threads:
    """Temporarily run torch on `n` CPU threads (0 = unchanged). Reusable: each `with` sets and restores.
    Decoding a small model token by token is a long chain of tiny ops: with several OpenMP threads every op ends
    in a barrier, and on a shared machine one descheduled thread stalls each of them; one thread is far faster."""

    def __init__(self, n: int):
        self.n, self.old = n, None

    def __enter__(self):
        import torch

        if self.n > 0 and self.n != torch.get_num_threads():
            self.old = torch.get_num_threads()
            torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        import torch

        if self.old is not None:
            torch.set_num_threads(self.old)
            self.old = None
