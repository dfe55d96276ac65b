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
    from lvm.prompt.modes import run_prompt
    from tokenizer.common.hardware import precision_name

    if args.dtype and args.precision == "auto":  # the older flag
        args.precision = precision_name(args.dtype)
    return run_prompt(args.model, args.tokenizer, prompt=args.prompt, batch=args.batch, out=args.out, n=args.n,
                      candidates=args.candidates, temperature=args.temperature, top_k=args.top_k,
                      top_p=args.top_p, seed=args.seed, device=args.device, precision=args.precision,
                      threads=args.threads, display="none" if args.no_display else args.display)
