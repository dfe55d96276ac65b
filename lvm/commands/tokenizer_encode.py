"""Images -> .npy code files: one int64 array (codes_per_image,) = (256,) per image, saved without pickle.

Output names mirror the input tree (a/b.png -> OUT/a/b.npy). Unreadable images are skipped, counted and
named at the end; existing outputs are kept (rerun after a kill continues). Two images that would write
one file (a/cat.png and a/cat.jpg -> OUT/a/cat.npy) are an error before anything is written: rename one,
or encode them into separate --out folders.

Example:
  lvm tokenizer encode runs/tok images/ --out codes/
"""

from lvm.commands.arg_types import POSITIVE_INT
from lvm.commands.hardware_args import add_hardware_arguments
from lvm_base.hardware import from_args


def add_arguments(p):
    p.add_argument("checkpoint", help="tokenizer checkpoint (dir or .ckpt)")
    p.add_argument("images", help="an image, a folder (recursive) or a .txt list")
    p.add_argument("--out", required=True, help="output folder for .npy files")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=16, help="images per batch, >= 1 (default: 16)")
    add_hardware_arguments(p)


def run(args):
    from_args(args)  # a device that is not there ends here, before any input is read
    from tokenizer.codes import encode_files

    res = encode_files(args.checkpoint, args.images, args.out, args.batch_size, args.device, args.precision)
    print(f"encoded {res.written} images -> {args.out} ({res.kept} already there, {len(res.skipped)} skipped)")
    for b in res.skipped[:20]:
        print(f"  skipped: {b}")
    return 0
