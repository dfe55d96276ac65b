"""Measure a tokenizer on a set of images: PSNR, SSIM, LPIPS (with local VGG weights), codebook usage (%)
and code perplexity, all over the whole set (one code histogram, not a rolling window).

CHECKPOINT is any format load_tokenizer reads (our run dir, the released LVM dir, a taming .ckpt).
--images: a folder (recursive), a .txt list, or .tar shards. Unreadable images are skipped and counted.
With --out the metrics are also written as JSON.

Example:
  lvm tokenizer eval runs/tok --images held_out/ --out runs/tok/eval.json
"""

from lvm.commands.arg_types import POSITIVE_INT
from lvm.commands.hardware_args import add_hardware_arguments
from lvm_base.hardware import from_args


def add_arguments(p):
    p.add_argument("checkpoint", help="tokenizer checkpoint (dir or .ckpt)")
    p.add_argument("--images", required=True, help="folder, list file or .tar shards")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=16)
    p.add_argument("--max-images", type=POSITIVE_INT, default=None)
    p.add_argument("--lpips-vgg", default=None, help="torchvision VGG16 state dict (local file)")
    p.add_argument("--lpips-lin", default=None, help="LPIPS linear-layer weights (local file)")
    add_hardware_arguments(p)
    p.add_argument("--out", default=None, help="write the metrics as JSON here")


def run(args):
    from_args(args)  # a device that is not there ends here, before any input is read
    from tokenizer.evaluate import evaluate_checkpoint

    evaluate_checkpoint(args.checkpoint, args.images, batch_size=args.batch_size, max_images=args.max_images,
                        lpips_vgg=args.lpips_vgg, lpips_lin=args.lpips_lin, device=args.device,
                        precision=args.precision, out=args.out)
    return 0
