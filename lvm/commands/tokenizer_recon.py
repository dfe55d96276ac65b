"""Write an original | reconstruction grid PNG (one row per image) through a tokenizer.

Example:
  lvm tokenizer recon runs/tok img1.png img2.png --out recon.png
  lvm tokenizer recon runs/tok held_out/ --max-images 8 --out recon.png
"""

from tokenizer.common.hardware import add_arguments as add_hardware_arguments, from_args


def add_arguments(p):
    p.add_argument("checkpoint", help="tokenizer checkpoint (dir or .ckpt)")
    p.add_argument("images", nargs="+", help="image files, or folders / .txt lists of images")
    p.add_argument("--out", required=True, help="output PNG")
    p.add_argument("--max-images", type=int, default=16)
    add_hardware_arguments(p)


def run(args):
    from_args(args)  # a device that is not there ends here, before any input is read
    from pathlib import Path

    from tokenizer import load_tokenizer
    from tokenizer.data import image_paths
    from tokenizer.evaluate import psnr_per_image
    from tokenizer.image_io import load_image, make_grid, pil_to_tensor, resize_square, save_png

    paths = [q for p in args.images for q in image_paths(p)][: args.max_images]
    tok = load_tokenizer(args.checkpoint, device=args.device, precision=args.precision)
    originals = [resize_square(load_image(p), tok.resolution, tok.resize_mode) for p in paths]
    codes = tok.encode_images(originals)
    recons = tok.decode_to_pil(codes)
    x = __import__("torch").stack([pil_to_tensor(im, (0, 1)) for im in originals])
    y = __import__("torch").stack([pil_to_tensor(im, (0, 1)) for im in recons])
    psnr = psnr_per_image(x, y)
    labels = [f"{Path(p).name[:14]} {float(v):.1f}dB" for p, v in zip(paths, psnr)]
    grid = make_grid([[o, r] for o, r in zip(originals, recons)], labels=labels,
                     col_labels=["original", "reconstruction"])
    save_png(grid, args.out)
    print(f"wrote {args.out} ({len(paths)} images, mean PSNR {float(psnr.mean()):.2f} dB)")
    return 0
