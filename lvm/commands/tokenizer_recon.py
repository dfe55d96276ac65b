"""Write an original | reconstruction grid PNG (one row per image) through a tokenizer.

Example:
  lvm tokenizer recon runs/tok img1.png img2.png --out recon.png
  lvm tokenizer recon runs/tok held_out/ --max-images 8 --out recon.png
"""

from lvm.commands.arg_types import POSITIVE_INT
from lvm.commands.hardware_args import add_hardware_arguments
from lvm_base.hardware import from_args


def add_arguments(p):
    p.add_argument("checkpoint", help="tokenizer checkpoint (dir or .ckpt)")
    p.add_argument("images", nargs="+", help="image files, or folders / .txt lists of images")
    p.add_argument("--out", required=True, help="output PNG")
    p.add_argument("--max-images", type=POSITIVE_INT, default=16)
    add_hardware_arguments(p)


def run(args):
    from_args(args)  # a device that is not there ends here, before any input is read
    from tokenizer.evaluate import reconstruction_grid

    reconstruction_grid(args.checkpoint, args.images, args.out, max_images=args.max_images, device=args.device,
                        precision=args.precision)
    return 0
