"""`lvm prompt --batch`: the released batch generation (`batch_generation.py`), one JSON object per line.

    {"input": ["a.png", "b.png"], "output": "out.png", "target": ["c.png"]}   # "target": --evaluate-mse only

Each line's input images are a sequential prompt; the model generates --n images for each of --candidates
candidates (the release's n_new_frames, n_candidates). The output image is a grid as the release writes
it: one row per candidate, columns = [the input images, with --include-input, then] the generated frames,
each cell at the tokenizer's resolution (its format follows the output's extension). --resize-output
`original` scales every cell to the size of the line's last input image, `W,H` (or `WxH`) to that size.

MSE (--evaluate-mse) is the release's: mean over candidates, frames, pixels and channels of the squared
difference of the generated image (decoded, clamped to [0, 1]) and the target (resized as the tokenizer
resizes its inputs, /255), times the number of channels (3); the printed figure is the mean over lines.
The targets must be as many as the new frames.

Context (--context C, default the model's context less the new image): the prompt keeps its last C input
images and every new frame sees at most the C images before it, as the release's inference does with its
context_frames = C + 1.

Paths resolve as lvm/jsonl.py says (inputs and targets against --input-base-dir, else the JSONL file's folder;
outputs against --output-base-dir, else the current folder). The run is resumable: OUT/<batch>.results.jsonl
records each finished line (its output and MSE), and a line whose output exists and is recorded is not
generated again. Bad lines are skipped with a one-line reason and counted; the run goes on. An output
that is an image the batch reads (the line's own input or target, or another line's, by path, symlink or
hard link) makes its line bad: it is never written over.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lvm.generate.sampling import DEFAULTS
from lvm.prompt.session import Session
from lvm_base.errors import InputError

CHANNELS = 3  # the release multiplies its per-value mean by the channel count


@dataclass
class BatchOptions:
    n: int = DEFAULTS.n                # new images per line
    candidates: int = 2                # the release's default
    context: int | None = None         # images each new one sees; None = the model's context less one
    evaluate_mse: bool = False
    include_input: bool = False
    resize_output: str = ""            # "" | "original" | "W,H" | "WxH"
    input_base_dir: str | None = None
    output_base_dir: str | None = None
    max_examples: int = 0
    json_input_key: str = "input"
    json_output_key: str = "output"
    json_target_key: str = "target"

    def cell_size(self, original: tuple[int, int]) -> tuple[int, int] | None:
        """(W, H) every grid cell is resized to, or None for the tokenizer's resolution."""
        size = parse_resize(self.resize_output)
        return original if size == "original" else size


MAX_SIDE = 16384  # output cells a grid may be resized to: past it one cell alone is a GB of pixels


def parse_resize(text: str):
    """`--resize-output`: None for '' (off), "original", or (W, H) from 'W,H' / 'WxH' with 1 <= W, H <=
    MAX_SIDE; a one-line InputError otherwise."""
    r = text.strip().lower()
    if not r:
        return None
    if r == "original":
        return r
    try:
        w, h = (int(x) for x in r.replace("x", ",").split(","))
    except ValueError:
        raise InputError(f"--resize-output must be 'original', 'W,H' or 'WxH', got {text!r}") from None
    if not (1 <= w <= MAX_SIDE and 1 <= h <= MAX_SIDE):
        raise InputError(f"--resize-output: expected a width and height in 1..{MAX_SIDE}, got {text!r}")
    return w, h


def generate_frames(s: Session, codes, n_new: int, candidates: int, context: int):
    """Codes (candidates, n_new, tokens per image) continuing the prompt `codes` (n, tokens per image),
    every new frame seeing at most the `context` images before it."""
    import torch

    eng = s.engine
    codes = codes[-context:]
    if context + 1 >= eng.context_images:  # the engine slides its window the same way
        return eng.generate(codes, n_new=n_new, candidates=candidates, sampling=s.sampling).images
    out = torch.empty(candidates, n_new, codes.shape[1], dtype=torch.long)
    for c in range(candidates):
        seq = codes
        for j in range(n_new):  # a shorter window than the engine's: one frame at a time
            g = eng.generate(seq[-context:], n_new=1, candidates=1, sampling=s.sampling,
                             seeds=[s.sampling.seed + c + 7919 * j])
            out[c, j] = g.images[0, 0]
            seq = torch.cat([seq, g.images[0]])
    return out


def decode_unit(tok, codes) -> np.ndarray:
    """Codes (..., tokens per image) -> float32 images (..., R, R, 3) in [0, 1], as the release decodes."""
    shape = codes.shape[:-1]
    lo, hi = tok.value_range
    x = tok.decode(codes.reshape(-1, codes.shape[-1])).float().cpu()
    x = ((x - lo) / (hi - lo)).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    return x.reshape(*shape, *x.shape[1:])


def release_mse(generated: np.ndarray, targets: np.ndarray) -> float:
    """The release's MSE of one line: generated (candidates, frames, H, W, C) against targets (frames, H, W,
    C), both in [0, 1]."""
    return float(np.mean((generated - targets[None]) ** 2) * generated.shape[-1])


def _unit_image(tok, path) -> np.ndarray:
    """(R, R, 3) float32 in [0, 1]: the image as the tokenizer reads it."""
    from lvm_base.image_io import load_image_tensor

    return load_image_tensor(path, tok.resolution, (0.0, 1.0), tok.resize_mode).permute(1, 2, 0).numpy()


def _grid(cells: np.ndarray, size):
    """(rows, cols, H, W, 3) in [0, 1] -> one PIL image, each cell resized to `size` (W, H) when given."""
    from PIL import Image

    rows, cols, h, w, _ = cells.shape
    arr = np.round(cells * 255).astype(np.uint8).transpose(0, 2, 1, 3, 4).reshape(rows * h, cols * w, 3)
    im = Image.fromarray(arr)
    return im if size is None else im.resize((size[0] * cols, size[1] * rows), Image.Resampling.BICUBIC)


def _save(im, path: Path):
    from PIL import Image

    from lvm_base.files import atomic_path

    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise InputError(f"{path}: unknown image extension (use .png, .jpg, ...)")
    with atomic_path(path) as tmp:
        im.save(tmp, format=fmt)


def _done(results: Path) -> dict[int, dict]:
    """Lines a killed or finished run recorded (a torn last line is ignored)."""
    done = {}
    if results.is_file():
        for ln in results.read_text().splitlines():
            try:
                r = json.loads(ln)
                done[int(r["line"])] = r
            except (ValueError, KeyError, TypeError):
                continue
    return done


def _file_id(path) -> tuple[int, int] | None:
    """(device, inode) of an existing file: equal for two names of one file (symlinks, hard links, ../)."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def _read_files(records, opts: BatchOptions) -> dict:
    """(device, inode) -> path of every existing image that a line of the batch reads."""
    from lvm.jsonl import Skipped

    ids = {}
    for rec in records:
        if not isinstance(rec, Skipped):
            for key in (opts.json_input_key, opts.json_target_key):
                for p in rec.paths.get(key) or []:
                    if (i := _file_id(p)) is not None:
                        ids.setdefault(i, p)
    return ids


def _one(s: Session, rec, opts: BatchOptions, context: int,
         read: dict | None = None) -> tuple[Path, float | None]:
    """Generate, save and score one line; (output path, MSE or None). `read`: `_read_files` of the batch,
    images its output must not replace."""
    from PIL import Image

    inputs = rec.paths[opts.json_input_key]
    outs = rec.paths[opts.json_output_key]
    if not inputs:
        raise InputError(f'"{opts.json_input_key}" is empty')
    if len(outs) != 1:
        raise InputError(f'"{opts.json_output_key}" must be one path')
    read = {**(read or {}), **{i: p for p in [*inputs, *(rec.paths.get(opts.json_target_key) or [])]
                               if (i := _file_id(p)) is not None}}
    if (i := _file_id(outs[0])) in read:
        raise InputError(f"{outs[0]}: the output is the image {read[i]} that the batch reads; choose another "
                         "output path (it is not written over)")
    targets = rec.paths.get(opts.json_target_key)
    if opts.evaluate_mse and (not targets or len(targets) != opts.n):
        raise InputError(f'--evaluate-mse needs {opts.n} "{opts.json_target_key}" image(s), '
                         f"got {len(targets or [])}")
    # read once, before generating: a bad target skips the line without spending a generation on it
    truth = np.stack([_unit_image(s.tok, p) for p in targets]) if opts.evaluate_mse else None
    codes = s.encode(inputs)  # a bad input is an ImageLoadError naming it
    size = None
    if opts.resize_output:
        with Image.open(inputs[-1]) as im:
            size = opts.cell_size(im.size)
    gen = generate_frames(s, codes, opts.n, opts.candidates, context)
    frames = decode_unit(s.tok, gen)  # (candidates, n_new, R, R, 3)
    cells = frames
    if opts.include_input:
        shown = np.stack([_unit_image(s.tok, p) for p in inputs])
        cells = np.concatenate([np.repeat(shown[None], opts.candidates, 0), frames], axis=1)
    out = Path(outs[0])
    _save(_grid(cells, size), out)
    return out, (release_mse(frames, truth) if truth is not None else None)


def _is_done(rec, prev: dict | None, opts: BatchOptions) -> bool:
    """Recorded by an earlier run, its output still there, and scored when this run scores."""
    return (bool(prev) and prev["output"] == rec.paths[opts.json_output_key][0] and Path(prev["output"]).is_file()
            and (not opts.evaluate_mse or prev.get("mse") is not None))


def run_batch(s: Session, path, opts: BatchOptions | None = None, progress: bool = True, print_fn=print) -> int:
    """Run the batch file `path`; 0 when every line was generated (or was already), else 1."""
    from tqdm import tqdm

    from lvm.jsonl import Skipped, read_records

    opts = opts or BatchOptions()
    s.check_match()  # a model/tokenizer mismatch is one error, not one per line
    if opts.n < 1 or opts.candidates < 1:
        raise InputError("--n and --candidates must be >= 1")
    if opts.max_examples < 0:
        raise InputError(f"--max-examples must be >= 0 (0 = every line), got {opts.max_examples}")
    opts.cell_size((1, 1))  # a bad --resize-output fails before any work
    native = s.engine.context_images
    context = native - 1 if opts.context is None else min(opts.context, native - 1)
    if context < 1:
        raise InputError(f"--context must be >= 1 (the images each new one sees), got {context}")
    path = Path(path)
    keys = {opts.json_input_key: True, opts.json_output_key: True, opts.json_target_key: False}
    records = list(read_records(path, keys, opts.input_base_dir, (opts.json_output_key,), opts.output_base_dir,
                                opts.max_examples))
    read = _read_files(records, opts)
    results = s.out_dir / f"{path.stem}.results.jsonl"
    results.parent.mkdir(parents=True, exist_ok=True)
    done = _done(results)
    mses, made, resumed, bad = [], 0, 0, 0
    with open(results, "a") as log:
        for rec in tqdm(records, unit="line", disable=not progress, dynamic_ncols=True):
            if not isinstance(rec, Skipped) and _is_done(rec, done.get(rec.line), opts):
                resumed += 1
                if opts.evaluate_mse and done[rec.line].get("mse") is not None:
                    mses.append(done[rec.line]["mse"])
                continue
            try:
                if isinstance(rec, Skipped):
                    raise InputError(rec.reason)
                out, mse = _one(s, rec, opts, context, read)
            except (InputError, OSError) as e:
                bad += 1
                tqdm.write(f"skipped {path}:{rec.line}: {' '.join(str(e).split())}")
                continue
            made += 1
            if mse is not None:
                mses.append(mse)
            log.write(json.dumps({"line": rec.line, "output": str(out), "mse": mse}) + "\n")
            log.flush()  # a killed run keeps every line it finished
    msg = f"{made} generated, {resumed} already done, {bad} skipped (log {results})"
    if mses:
        msg += f"; MSE {np.mean(mses):.6f} over {len(mses)} lines (the release's: x{CHANNELS} channels, pixels in [0, 1])"
    print_fn(msg)
    return 0 if not bad else 1
