""".npy code files -> PNG images. Each file holds (256,) codes or (n, 256) for n images (saved as
name_0.png, name_1.png, ...). Files that are not valid code arrays are skipped and named.

Example:
  lvm tokenizer decode runs/tok codes/ --out decoded/
"""

from lvm.commands.hardware_args import add_hardware_arguments
from lvm_base.hardware import from_args


def add_arguments(p):
    p.add_argument("checkpoint", help="tokenizer checkpoint (dir or .ckpt)")
    p.add_argument("codes", help="a .npy file or a folder of them (recursive)")
    p.add_argument("--out", required=True, help="output folder for PNGs")
    add_hardware_arguments(p)


def run(args):
    from_args(args)  # a device that is not there ends here, before any input is read
    from tokenizer.codes import decode_files

    res = decode_files(args.checkpoint, args.codes, args.out, args.device, args.precision)
    print(f"decoded {res.written} images -> {args.out} ({len(res.skipped)} files skipped)")
    for b in res.skipped[:20]:
        print(f"  skipped: {b}")
    return 0
