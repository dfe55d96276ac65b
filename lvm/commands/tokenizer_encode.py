"""Images -> .npy code files: one int64 array (codes_per_image,) = (256,) per image, saved without pickle.

Output names mirror the input tree (a/b.png -> OUT/a/b.npy). Unreadable images are skipped, counted and
named at the end; existing outputs are kept (rerun after a kill continues).

Example:
  lvm tokenizer encode runs/tok images/ --out codes/
"""

from tokenizer.common.hardware import add_arguments as add_hardware_arguments, from_args


def add_arguments(p):
    p.add_argument("checkpoint", help="tokenizer checkpoint (dir or .ckpt)")
    p.add_argument("images", help="an image, a folder (recursive) or a .txt list")
    p.add_argument("--out", required=True, help="output folder for .npy files")
    p.add_argument("--batch-size", type=int, default=16)
    add_hardware_arguments(p)


def run(args):
    from_args(args)  # a device that is not there ends here, before any input is read
    import io
    from pathlib import Path

    import numpy as np
    from tqdm import tqdm

    from tokenizer import load_tokenizer
    from tokenizer.data import image_paths
    from tokenizer.common.errors import ImageLoadError
    from tokenizer.common.files import atomic_write_bytes
    from tokenizer.image_io import load_image

    paths = image_paths(args.images)
    root = Path(args.images) if Path(args.images).is_dir() else None
    out = Path(args.out)

    def target(p):
        rel = Path(p).relative_to(root) if root else Path(Path(p).name)
        return (out / rel).with_suffix(".npy")

    todo = [p for p in paths if not target(p).exists()]
    tok = load_tokenizer(args.checkpoint, device=args.device, precision=args.precision)
    bad, done = [], 0
    for i in tqdm(range(0, len(todo), args.batch_size), desc="encode", unit="batch"):
        imgs, keep = [], []
        for p in todo[i:i + args.batch_size]:
            try:
                imgs.append(load_image(p))
                keep.append(p)
            except ImageLoadError as e:
                bad.append(str(e))
        if not imgs:
            continue
        codes = tok.encode_images(imgs, batch_size=args.batch_size).numpy().astype(np.int64)
        for p, c in zip(keep, codes):
            buf = io.BytesIO()
            np.save(buf, c, allow_pickle=False)
            atomic_write_bytes(target(p), buf.getvalue())
            done += 1
    print(f"encoded {done} images -> {out} ({len(paths) - len(todo)} already there, {len(bad)} skipped)")
    for b in bad[:20]:
        print(f"  skipped: {b}")
    return 0
