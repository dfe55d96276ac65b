"""Perplexity of target images given input images, in the released evaluation's JSONL format.

Each line of FILE.jsonl is {"input": [image paths], "target": [image paths]}. Relative paths are joined to
--input-base-dir, or to the JSONL file's folder when it is not given. Images are tokenized with --tokenizer.
Two figures over the target tokens, each given the input images and the earlier target tokens:

  perplexity  the released evaluation's number: per example exp(mean NLL of its target tokens), then the
              mean over examples (the headline, comparable with the paper and the release's script);
  pooled      exp(total NLL / total target tokens): lower (Jensen), what a token-level loss converts to.

Lines that cannot be used (bad JSON, unreadable image) are skipped and counted. --out writes both figures
and one row per example as JSON.

example:
  lvm eval perplexity eval.jsonl --model runs/lvm-tiny/checkpoints/step-00001000 --tokenizer runs/tok
"""

from lvm.commands.arg_types import NON_NEGATIVE_INT, POSITIVE_INT


def add_arguments(p):
    from lvm.commands.pair_args import add_pair_arguments

    p.add_argument("file", metavar="FILE.jsonl", help='JSON lines {"input": [paths], "target": [paths]}')
    add_pair_arguments(p)
    p.add_argument("--batch-size", type=POSITIVE_INT, default=4, help="sequences per forward pass (default 4)")
    p.add_argument("--input-base-dir", default=None,
                   help="folder that relative image paths are joined to (default: the JSONL file's folder)")
    p.add_argument("--max-examples", type=NON_NEGATIVE_INT, default=0, help="evaluate only the first N lines (0 = all)")
    p.add_argument("--json-input-key", default="input", help='key of the input image list (default "input")')
    p.add_argument("--json-target-key", default="target", help='key of the target image list (default "target")')
    p.add_argument("--out", default=None, help="also write per-example results to this JSON file")


def run(args):
    from lvm.eval.perplexity import evaluate_file
    from lvm_base.hardware import from_args

    from_args(args)  # a device that is not there is a one-line error before anything loads
    evaluate_file(args.file, args.model, args.tokenizer, args.device, args.precision,
                  batch_size=args.batch_size, out=args.out, input_key=args.json_input_key,
                  target_key=args.json_target_key, input_base_dir=args.input_base_dir,
                  max_examples=args.max_examples)
    return 0
