"""Image files <-> .npy code files, in bulk: `lvm tokenizer encode` and `lvm tokenizer decode`.

A code file is one int64 array saved without pickle: (codes_per_image,) for one image, (n, codes_per_image)
for n images. Output names mirror the input tree; bad inputs are skipped, counted and named.

Two inputs that would write one output (a/cat.png and a/cat.jpg -> a/cat.npy; two files of one name in a
.txt list) make `encode` an InputError before anything is written: the documented name (the input's, with
.npy for its extension) is what `decode` turns back into name.png and what a rerun looks for to resume,
so it is kept rather than made unique. `decode` skips (and names) a file whose image another file of
this run wrote already.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Outcome:
    """What a bulk job did: files written, inputs already done (kept), inputs skipped with the reason."""

    written: int = 0
    kept: int = 0
    skipped: list[str] = field(default_factory=list)


def encode_files(checkpoint, images, out, batch_size: int = 16, device: str = "auto",
                 precision: str = "auto", progress: bool = True) -> Outcome:
    """Every image under `images` (a file, a folder, recursive, or a .txt list) -> OUT/<same path>.npy.
    Existing outputs are kept, so a rerun after a kill continues."""
    from tqdm import tqdm

    from lvm_base.errors import ImageLoadError, InputError
    from lvm_base.files import atomic_write_bytes
    from .data import image_paths
    from lvm_base.image_io import load_image
    from .loaders import load_tokenizer

    if batch_size < 1:
        raise InputError(f"batch size {batch_size} must be >= 1")
    paths = image_paths(images)
    root = Path(images) if Path(images).is_dir() else None
    out = Path(out)

    def target(p):
        rel = Path(p).relative_to(root) if root else Path(Path(p).name)
        return (out / rel).with_suffix(".npy")

    paths = _one_source_per_target(paths, target)
    todo = [p for p in paths if not target(p).exists()]
    res = Outcome(kept=len(paths) - len(todo))
    tok = load_tokenizer(checkpoint, device=device, precision=precision)
    for i in tqdm(range(0, len(todo), batch_size), desc="encode", unit="batch", disable=not progress):
        imgs, keep = [], []
        for p in todo[i:i + batch_size]:
            try:
                imgs.append(load_image(p))
                keep.append(p)
            except ImageLoadError as e:
                res.skipped.append(str(e))
        if not imgs:
            continue
        codes = tok.encode_images(imgs, batch_size=batch_size).numpy().astype(np.int64)
        for p, c in zip(keep, codes):
            buf = io.BytesIO()
            np.save(buf, c, allow_pickle=False)
            atomic_write_bytes(target(p), buf.getvalue())
            res.written += 1
    return res


def _one_source_per_target(paths, target) -> list:
    """`paths` without repeats of one file; InputError when two files would write one output."""
    from lvm_base.errors import InputError

    by_target, unique = {}, []
    for p in paths:
        t, key = target(p), Path(p).resolve()
        if t not in by_target:
            by_target[t] = (p, key)
            unique.append(p)
        elif by_target[t][1] != key:
            raise InputError(f"{t}: both {by_target[t][0]} and {p} would be encoded to this file; rename one, "
                             "or encode them into separate --out folders")
    return unique


def read_codes(path, tok) -> np.ndarray:
    """(n, codes_per_image) integer codes of one .npy file, checked against tokenizer `tok`; ValueError or
    OSError saying what is wrong."""
    a = np.load(path, allow_pickle=False)
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2 or a.shape[1] != tok.codes_per_image or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"expected integer codes of shape ({tok.codes_per_image},) or "
                         f"(n, {tok.codes_per_image}), got {a.dtype} {a.shape}")
    if a.size and (a.min() < 0 or a.max() >= tok.codebook_size):
        raise ValueError(f"codes outside [0, {tok.codebook_size - 1}]")
    return a


def decode_files(checkpoint, codes, out, device: str = "auto", precision: str = "auto",
                 progress: bool = True) -> Outcome:
    """A .npy file or every one under a folder -> PNGs (name.png, or name_0.png ... for several images)."""
    from tqdm import tqdm

    from lvm_base.errors import InputError
    from lvm_base.image_io import save_png
    from .loaders import load_tokenizer

    src = Path(codes)
    if src.is_dir():
        files, root = sorted(src.rglob("*.npy")), src
    elif src.is_file():
        files, root = [src], src.parent
    else:
        raise InputError(f"{src}: no such file or folder")
    if not files:
        raise InputError(f"{src}: no .npy files")
    tok = load_tokenizer(checkpoint, device=device, precision=precision)
    out, res = Path(out), Outcome()
    written = {}  # image -> the code file it came from: x.npy of 2 images and x_1.npy both name x_1.png
    for f in tqdm(files, desc="decode", unit="file", disable=not progress):
        try:
            a = read_codes(f, tok)
        except (ValueError, OSError) as e:
            res.skipped.append(f"{f}: {e}")
            continue
        rel = f.relative_to(root).with_suffix("")
        targets = [out / (rel.with_suffix(".png") if a.shape[0] == 1 else Path(f"{rel}_{j}.png"))
                   for j in range(a.shape[0])]
        clash = next((t for t in targets if t in written), None)
        if clash is not None:
            res.skipped.append(f"{f}: would overwrite {clash}, decoded from {written[clash]}")
            continue
        for t, img in zip(targets, tok.decode_to_pil(a)):
            save_png(img, t)
            written[t] = f
            res.written += 1
    return res
