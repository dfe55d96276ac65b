"""Prompt a model with images. Three ways:

- interactive REPL (default): add images, /pair A B, /query B, /gen, /candidates k, /set temperature 0.8,
  /show, /undo, /save DIR ... (type /help inside). Ctrl-C cancels a running generation.
- one prompt file: --prompt prompts/rotation.yaml --out DIR writes one PNG per candidate, grid.png
  (prompt | candidates, labeled) and generation.json (settings, seeds, tokens/s).
- batch: --batch file.jsonl in the released format, one {"input": [images], "output": "out.png"} per line
  (optional "target": image -> MSE in [0,1] pixels is reported); each output PNG is the input images and
  the generated image side by side.

--model is an HF Llama directory (ours or the released LVM-7B layout), --tokenizer a tokenizer directory
(ours, the released MUSE VQGAN dir, or a taming .ckpt). Without them, the model/tokenizer that
`lvm demo` leaves in runs/demo/ are used. Prompts are raw image tokens (no BOS), ids >= K never sampled.
--device / --precision (default auto, see `lvm env`) place both; a half-precision 7B loads straight onto a GPU.

examples:
  lvm prompt --model runs/lvm --tokenizer runs/tok
  lvm prompt --model runs/lvm --tokenizer runs/tok --prompt prompts/depth.yaml --out out/depth --candidates 4
  lvm prompt --model LVM-7B --tokenizer vqgan-lvm --batch eval.jsonl --temperature 0 --device cuda
"""

from __future__ import annotations

import argparse


def add_arguments(p):
    p.add_argument("--model", default=None, help="HF Llama model directory (default: runs/demo/model)")
    p.add_argument("--tokenizer", default=None, help="tokenizer checkpoint (default: runs/demo/tokenizer)")
    p.add_argument("--prompt", default=None, help="one-shot: a prompt YAML file (see prompts/)")
    p.add_argument("--batch", default=None, help="batch: a JSONL file in the released format")
    p.add_argument("--out", default="out/prompt", help="output folder (REPL results, one-shot results)")
    p.add_argument("--n", type=int, default=None, help="new images to generate (default: the prompt's n)")
    p.add_argument("--candidates", type=int, default=1)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    from tokenizer.common.hardware import add_arguments as device_arguments

    device_arguments(p, device_help="where the model and the tokenizer run: auto (a GPU if there is one), cpu, "
                                    "cuda, cuda:N or mps")
    p.add_argument("--dtype", default=None, choices=["bfloat16", "float32"], help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads (0 = torch's default; 1 decodes faster on a busy shared machine)")
    p.add_argument("--no-display", action="store_true", help="no inline image preview in the terminal")
    p.add_argument("--display", default=None, choices=["kitty", "sixel", "ansi", "none"],
                   help="force a preview method (default: detect)")


def run(args):
    from lvm.generate.engine import Sampling
    from lvm.prompt.repl import Session, repl
    from tokenizer.common.hardware import from_args, precision_name

    if args.dtype and args.precision == "auto":  # the older flag
        args.precision = precision_name(args.dtype)
    from_args(args)  # a device that is not there is a one-line error before anything loads

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    display = "none" if args.no_display else args.display
    if args.prompt and args.batch:
        from tokenizer.common.errors import InputError

        raise InputError("give --prompt or --batch, not both")
    s = Session(args.model, args.tokenizer, out_dir=args.out, display=display, device=args.device,
                precision=args.precision)
    s.sampling = Sampling(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    s.candidates = args.candidates
    if args.batch:
        return batch(s, args.batch)
    if args.prompt:
        from pathlib import Path

        s.command(f"/load '{args.prompt}'")
        n = args.n or (s.prompt.n_new if s.prompt.mode == "sequential" else 1)
        res = s.generate(n, out_dir=Path(args.out))
        print(f"wrote {len(res['files'])} candidate PNGs, {res['grid']} and {res['dir'] / 'generation.json'}")
        if display != "none":
            from lvm.prompt import display as disp

            disp.preview(res["grid_image"], display)
        return 0
    return repl(s)


def batch(s, path) -> int:
    """Released batch-generation format: {"input": [...], "output": "...", "target"?: "..."} per line."""
    import json
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from tokenizer.common.errors import InputError
    from tokenizer.image_io import load_image, resize_square, save_png

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such batch file")
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    r = s.tok.resolution
    mses, bad = [], 0
    for i, ln in enumerate(lines, 1):
        where = f"{path}:{i}"
        try:
            item = json.loads(ln)
            if not isinstance(item, dict) or not isinstance(item.get("input"), list) or "output" not in item:
                raise InputError('each line is {"input": [image paths], "output": "path"}')
            s.prompt = type(s.prompt)()
            s.prompt.add_frames(Path(x) for x in item["input"])
            s._check_images(s.prompt.images)
            res = s.generate(1, write=False)
        except (InputError, OSError, json.JSONDecodeError) as e:
            bad += 1
            print(f"skipped {where}: {' '.join(str(e).split())}")
            continue
        gen = res["images"][0][0]
        shown = [resize_square(load_image(x), r, s.tok.resize_mode) for x in item["input"]] + [gen]
        strip = Image.new("RGB", (r * len(shown), r))
        for k, im in enumerate(shown):
            strip.paste(im, (k * r, 0))
        save_png(strip, item["output"])
        msg = f"{where}: wrote {item['output']}"
        if item.get("target"):
            t = np.asarray(resize_square(load_image(item["target"]), r, s.tok.resize_mode), np.float32) / 255
            mse = float(((np.asarray(gen, np.float32) / 255 - t) ** 2).mean())
            mses.append(mse)
            msg += f" (MSE {mse:.4f})"
        print(msg)
    print(f"{len(lines) - bad} generated, {bad} skipped"
          + (f"; mean MSE {np.mean(mses):.4f} over {len(mses)} targets" if mses else ""))
    return 0 if not bad else 1
