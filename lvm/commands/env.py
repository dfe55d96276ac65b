"""Print what a bug report needs and what `--device auto --precision auto` picks on this machine.

Versions (lvm, torch, transformers), the CPU model and the instruction set torch dispatches to (it
honours ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA), whether bf16 is native, threads, GPUs with memory
and compute capability, the device and precision chosen for inference and for training, and whether the
CPU decode kernels are built.

    lvm env
"""


def add_arguments(p):
    pass


def run(args):
    from lvm.env import report

    print(report())
    return 0
