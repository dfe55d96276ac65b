""".npy code files -> PNG images. Each file holds (256,) codes or (n, 256) for n images (saved as
name_0.png, name_1.png, ...). Files that are not valid code arrays are skipped and named.

Example:
  lvm tokenizer decode runs/tok codes/ --out decoded/
"""

from tokenizer.common.hardware import add_arguments as add_hardware_arguments, from_args


def add_arguments(p):
    p.add_argument("checkpoint", help="tokenizer checkpoint (dir or .ckpt)")
    p.add_argument("codes", help="a .npy file or a folder of them (recursive)")
    p.add_argument("--out", required=True, help="output folder for PNGs")
    add_hardware_arguments(p)


def run(args):
    from_args(args)  # a device that is not there ends here, before any input is read
    from pathlib import Path

    import numpy as np
    from tqdm import tqdm

    from tokenizer import load_tokenizer
    from tokenizer.common.errors import InputError
    from tokenizer.image_io import save_png

    src = Path(args.codes)
    if src.is_dir():
        files, root = sorted(src.rglob("*.npy")), src
    elif src.is_file():
        files, root = [src], src.parent
    else:
        raise InputError(f"{src}: no such file or folder")
    if not files:
        raise InputError(f"{src}: no .npy files")
    tok = load_tokenizer(args.checkpoint, device=args.device, precision=args.precision)
    out, bad, n = Path(args.out), [], 0
    for f in tqdm(files, desc="decode", unit="file"):
        try:
            a = np.load(f, allow_pickle=False)
            if a.ndim == 1:
                a = a[None]
            if a.ndim != 2 or a.shape[1] != tok.codes_per_image or not np.issubdtype(a.dtype, np.integer):
                raise ValueError(f"expected integer codes of shape ({tok.codes_per_image},) or "
                                 f"(n, {tok.codes_per_image}), got {a.dtype} {a.shape}")
            if a.size and (a.min() < 0 or a.max() >= tok.codebook_size):
                raise ValueError(f"codes outside [0, {tok.codebook_size - 1}]")
        except (ValueError, OSError) as e:
            bad.append(f"{f}: {e}")
            continue
        rel = f.relative_to(root).with_suffix("")
        for j, img in enumerate(tok.decode_to_pil(a)):
            name = rel.with_suffix(".png") if a.shape[0] == 1 else Path(f"{rel}_{j}.png")
            save_png(img, out / name)
            n += 1
    print(f"decoded {n} images -> {out} ({len(bad)} files skipped)")
    for b in bad[:20]:
        print(f"  skipped: {b}")
    return 0
