"""The `--device` and `--precision` flags of every command that computes with torch (resolved by
lvm_base.hardware.resolve; read back with `from_args` / `apply_args` / `parse_precisions` there)."""

from __future__ import annotations

from lvm_base.hardware import PRECISIONS


def add_hardware_arguments(parser, device_help: str = "", precision_help: str = "", many: bool = False) -> None:
    """`--device` and `--precision` (both default auto). `many=True` (benchmarks) makes --precision a comma
    list of precisions compared side by side, read with lvm_base.hardware.parse_precisions."""
    parser.add_argument("--device", default="auto",
                        help=device_help or "auto (this rank's GPU, else MPS, else CPU), cpu, cuda, cuda:N or mps")
    choices = "{" + ",".join(PRECISIONS) + "}"
    parser.add_argument("--precision", default="auto", choices=None if many else list(PRECISIONS),
                        metavar=choices + "[,...]" if many else None,
                        help=precision_help or "compute precision; auto = bf16 where the hardware computes it "
                                               "natively and, on a CPU, measures faster (AMX/AVX512-BF16 CPUs, GPUs "
                                               "from Ampere), fp16 on older GPUs, else fp32 (see `lvm env`)")
