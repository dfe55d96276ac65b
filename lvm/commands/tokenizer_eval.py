"""Measure a tokenizer on a set of images: PSNR, SSIM, LPIPS (with local VGG weights), codebook usage (%)
and code perplexity, all over the whole set (one code histogram, not a rolling window).

CHECKPOINT is any format load_tokenizer reads (our run dir, the released LVM dir, a taming .ckpt).
--images: a folder (recursive), a .txt list, or .tar shards. Unreadable images are skipped and counted.
With --out the metrics are also written as JSON.

Example:
  lvm tokenizer eval runs/tok --images held_out/ --out runs/tok/eval.json
"""

import argparse

from tokenizer.common.hardware import add_arguments as add_hardware_arguments, from_args


def add_arguments(p):
    p.add_argument("checkpoint", help="tokenizer checkpoint (dir or .ckpt)")
    p.add_argument("--images", required=True, help="folder, list file or .tar shards")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-images", type=int, default=None)
    p.add_argument("--lpips-vgg", default=None, help="torchvision VGG16 state dict (local file)")
    p.add_argument("--lpips-lin", default=None, help="LPIPS linear-layer weights (local file)")
    add_hardware_arguments(p)
    p.add_argument("--fp32", action="store_const", const="fp32", dest="precision", 
                   help=argparse.SUPPRESS)  # older spelling of --precision fp32
    p.add_argument("--out", default=None, help="write the metrics as JSON here")


def run(args):
    from_args(args)  # a device that is not there ends here, before any input is read
    import json

    from torch.utils.data import DataLoader

    from tokenizer import load_tokenizer
    from tokenizer.data import build_dataset, collate
    from tokenizer.evaluate import evaluate, format_metrics
    from tokenizer.common.files import atomic_write_text
    from tokenizer.lpips import maybe_lpips

    tok = load_tokenizer(args.checkpoint, device=args.device, precision=args.precision)
    ds = build_dataset(args.images, tok.resolution, tok.value_range, tok.resize_mode, loop=False)
    loader = DataLoader(ds, batch_size=args.batch_size, collate_fn=collate)
    lp = maybe_lpips(args.lpips_vgg, args.lpips_lin)
    r = evaluate(tok, loader, lp, progress=True, max_images=args.max_images)
    r["checkpoint"] = str(args.checkpoint)
    r["images_spec"] = str(args.images)
    plan = tok.inference_plan()
    r["device"], r["precision"] = plan.device, plan.precision
    print(format_metrics(r))
    if args.out:
        atomic_write_text(args.out, json.dumps(r, indent=2) + "\n")
    return 0
