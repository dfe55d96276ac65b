"""Perplexity of target images given input images, in the released evaluation's JSONL format.

Each line of FILE.jsonl is {"input": [image paths], "target": [image paths]} (relative paths are read
from the JSONL file's directory). Images are tokenized with --tokenizer; perplexity = exp(mean negative
log-likelihood over all target tokens, each given the input images and the earlier target tokens).
Lines that cannot be used (bad JSON, unreadable image) are skipped and counted.

example:
  lvm eval perplexity eval.jsonl --model runs/lvm-tiny/checkpoints/step-00001000 --tokenizer runs/tok
"""


def add_arguments(p):
    p.add_argument("file", metavar="FILE.jsonl", help='JSON lines {"input": [paths], "target": [paths]}')
    p.add_argument("--model", required=True, help="HF LlamaForCausalLM directory (ours or the released LVM-7B)")
    p.add_argument("--tokenizer", required=True, help="tokenizer checkpoint (ours, released LVM dir, taming .ckpt)")
    p.add_argument("--batch-size", type=int, default=4, help="sequences per forward pass (default 4)")
    from tokenizer.common.hardware import add_arguments as device_arguments

    device_arguments(p, device_help="where the model and the tokenizer run: auto (a GPU if there is one), cpu, "
                                    "cuda, cuda:N or mps")
    p.add_argument("--out", default=None, help="also write per-example results to this JSON file")


def read_examples(path, tok, layout):
    """Yield (line number, input codes, target codes); skipped lines are reported on stderr and counted."""
    import json
    import sys
    from pathlib import Path

    from tokenizer.common.errors import InputError

    path = Path(path)
    base = path.parent
    examples, skipped = [], 0
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict) or not isinstance(rec.get("target"), list) or not rec["target"] \
                    or not isinstance(rec.get("input", []), list):
                raise InputError('expected {"input": [paths], "target": [paths, at least one]}')
            paths = [p if Path(p).is_absolute() else str(base / p) for p in rec.get("input", []) + rec["target"]]
            codes = tok.encode_images(paths).numpy()
            n_in = len(rec.get("input", []))
            layout.check_codes(codes, "tokenizer output")
            examples.append((n, codes[:n_in], codes[n_in:]))
        except (InputError, OSError, ValueError) as e:
            skipped += 1
            print(f"warning: {path}:{n}: skipped ({' '.join(str(e).split())})", file=sys.stderr)
    return examples, skipped


def run(args):
    import json
    import math
    from pathlib import Path

    from lvm.checkpoints import load_pair
    from lvm.eval.perplexity import target_nll
    from lvm.tokens import TokenLayout
    from tokenizer.common.errors import InputError
    from tokenizer import load_tokenizer
    from tokenizer.common.hardware import from_args
    from tokenizer.common.files import atomic_write_text

    from_args(args)  # a device that is not there is a one-line error before anything loads
    if not Path(args.file).is_file():
        raise InputError(f"{args.file}: no such file")
    model, tok, plan = load_pair(args.model, args.tokenizer, args.device, args.precision)
    layout = TokenLayout.from_model_config(model.config)
    examples, skipped = read_examples(args.file, tok, layout)
    if not examples:
        raise InputError(f"{args.file}: no usable examples ({skipped} skipped)")
    total, count, per = target_nll(model, [(i, t) for _, i, t in examples], layout,
                                   batch_size=args.batch_size, precision=plan.precision)
    ppl = math.exp(total / count)
    print(f"perplexity {ppl:.4f} (mean NLL {total / count:.4f} over {count} target tokens, "
          f"{len(examples)} examples, {skipped} skipped; {plan.device} {plan.precision})")
    if args.out:
        rows = [{"line": n, "nll": s, "tokens": c, "perplexity": math.exp(s / c)}
                for (n, _, _), (s, c) in zip(examples, per)]
        atomic_write_text(args.out, json.dumps({"perplexity": ppl, "mean_nll": total / count, "tokens": count,
                                                "examples": len(examples), "skipped": skipped,
                                                "device": plan.device, "precision": plan.precision,
                                                "per_example": rows}, indent=1))
    return 0
