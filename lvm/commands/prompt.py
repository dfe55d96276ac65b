"""Prompt a model with images. Three ways:

- interactive REPL (default): add images, /pair A B, /query B, /gen, /candidates k, /set temperature 0.8,
  /show, /undo, /save DIR ... (type /help inside). Ctrl-C cancels a running generation.
- one prompt file: --prompt prompts/rotation.yaml --out DIR writes one PNG per candidate, grid.png
  (prompt | candidates, labeled) and generation.json (settings, seeds, tokens/s).
- batch: --batch file.jsonl, the released batch generation: one {"input": [images], "output": "out.png"}
  per line; --n images for each of --candidates candidates (default 2, as the release), the output a grid
  with one row per candidate ([inputs with --include-input +] generated frames);
  --evaluate-mse scores against "target": [images] with the release's MSE (x3 channels, pixels in [0, 1]).
  Resumable: OUT/<batch>.results.jsonl records finished lines, existing outputs are not generated again.

--model is an HF Llama directory or hub id (ours or the released LVM-7B layout), --tokenizer a tokenizer directory
(ours, the released MUSE VQGAN dir, or a taming .ckpt). Without them, the model/tokenizer that
`lvm demo` leaves in runs/demo/ are used. Prompts are raw image tokens (no BOS), ids >= K never sampled.
--device / --precision (default auto, see `lvm env`) place both; a half-precision 7B loads straight onto a GPU.

examples:
  lvm prompt --model runs/lvm --tokenizer runs/tok
  lvm prompt --model runs/lvm --tokenizer runs/tok --prompt prompts/depth.yaml --out out/depth --candidates 4
  lvm prompt --model LVM-7B --tokenizer vqgan-lvm --batch eval.jsonl --input-base-dir data/ \
      --output-base-dir out/ --n 2 --candidates 4 --include-input --evaluate-mse --device cuda
"""

from __future__ import annotations

import argparse

from lvm.commands.arg_types import (FRACTION, NON_NEGATIVE_FLOAT, NON_NEGATIVE_INT, POSITIVE_INT, SEED_INT, int_range,
                                    resize_spec)
from lvm.generate.sampling import DEFAULTS

# images each new one sees: one input image at least
CONTEXT = int_range(1, 2**31 - 1)
# new images of one prompt: four contexts' worth is a long continuation already, and each costs a full
# image of decoding per candidate
MAX_NEW_IMAGES = 64


def prompt_file(text: str) -> str:
    """--prompt: the file is read and checked while the flags are parsed, so a bad one fails in one line
    before a model loads (the session reads it again)."""
    from lvm.prompt.prompts import load_prompt
    from lvm_base.errors import InputError, one_line

    try:
        load_prompt(text)
    except (InputError, OSError) as e:
        raise argparse.ArgumentTypeError(one_line(e)) from None
    return text


def add_arguments(p):
    from lvm.commands.pair_args import add_pair_arguments

    add_pair_arguments(p, default_model=True)
    p.add_argument("--prompt", default=None, type=prompt_file, help="one-shot: a prompt YAML file (see prompts/)")
    p.add_argument("--batch", default=None, help="batch: a JSONL file in the released format")
    p.add_argument("--out", default="out/prompt",
                   help="output folder (REPL results, one-shot results, the batch's results log)")
    p.add_argument("--n", type=int_range(1, MAX_NEW_IMAGES), default=None,
                   help=f"new images to generate, 1..{MAX_NEW_IMAGES} (past 15 the context slides; default: "
                        f"the prompt's n; batch: {DEFAULTS.n})")
    p.add_argument("--candidates", type=POSITIVE_INT, default=None,
                   help=f"candidates per prompt (default {DEFAULTS.candidates}; batch: 2, as the release)")
    p.add_argument("--temperature", type=NON_NEGATIVE_FLOAT, default=DEFAULTS.temperature,
                   help=f"0 = greedy (default {DEFAULTS.temperature:g})")
    p.add_argument("--top-k", type=NON_NEGATIVE_INT, default=DEFAULTS.top_k,
                   help=f"sample from the k likeliest tokens only, 0 = off (default {DEFAULTS.top_k})")
    p.add_argument("--top-p", type=FRACTION, default=DEFAULTS.top_p,
                   help=f"sample from the smallest set of tokens holding this much probability, 1 = off "
                        f"(default {DEFAULTS.top_p:g})")
    p.add_argument("--seed", type=SEED_INT, default=DEFAULTS.seed,
                   help=f"candidate c samples with seed + c (default {DEFAULTS.seed})")
    b = p.add_argument_group("batch (--batch), with the released batch_generation.py's options")
    b.add_argument("--context", type=CONTEXT, default=None,
                   help="images each new one sees: the prompt keeps its last N (default: the model's context less "
                        "the new image; the release's context_frames is N + 1)")
    b.add_argument("--evaluate-mse", action="store_true", help='MSE of the generated frames against "target"')
    b.add_argument("--include-input", action="store_true", help="the output grid starts with the input images")
    b.add_argument("--resize-output", default="", type=resize_spec,
                   help="resize every grid cell: 'original' (the last input's size) or W,H / WxH")
    b.add_argument("--input-base-dir", default=None,
                   help="folder relative input/target paths are joined to (default: the JSONL file's folder)")
    b.add_argument("--output-base-dir", default=None,
                   help="folder relative output paths are joined to (default: the current folder)")
    b.add_argument("--max-examples", type=NON_NEGATIVE_INT, default=0, help="only the first N lines (0 = all)")
    b.add_argument("--json-input-key", default="input")
    b.add_argument("--json-output-key", default="output")
    b.add_argument("--json-target-key", default="target")
    p.add_argument("--threads", type=NON_NEGATIVE_INT, default=0,
                   help="torch threads (0 = torch's default; 1 decodes faster on a busy shared machine)")
    p.add_argument("--no-speculative", action="store_true",
                   help="decode one token per forward pass (default: speculative decoding where it pays, drafting "
                        "from the previous image; same greedy output, same sampling distribution)")
    p.add_argument("--no-display", action="store_true", help="no inline image preview in the terminal")
    p.add_argument("--display", default=None, choices=["kitty", "sixel", "ansi", "none"],
                   help="force a preview method (default: detect)")


def run(args):
    from lvm.prompt.modes import run_prompt
    batch = None
    if args.batch:
        from lvm.prompt.batch import BatchOptions

        d = BatchOptions()
        batch = BatchOptions(n=args.n or d.n, candidates=args.candidates or d.candidates,
                             context=args.context, evaluate_mse=args.evaluate_mse,
                             include_input=args.include_input, resize_output=args.resize_output,
                             input_base_dir=args.input_base_dir, output_base_dir=args.output_base_dir,
                             max_examples=args.max_examples, json_input_key=args.json_input_key,
                             json_output_key=args.json_output_key, json_target_key=args.json_target_key)
    return run_prompt(args.model, args.tokenizer, prompt=args.prompt, batch=args.batch, batch_options=batch,
                      out=args.out, n=args.n,
                      candidates=args.candidates or DEFAULTS.candidates, temperature=args.temperature, top_k=args.top_k,
                      top_p=args.top_p, seed=args.seed, device=args.device, precision=args.precision,
                      threads=args.threads, display="none" if args.no_display else args.display,
                      speculative=not args.no_speculative)
