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


def run(args):
    from lvm.eval.perplexity import evaluate_file
    from tokenizer.common.hardware import from_args

    from_args(args)  # a device that is not there is a one-line error before anything loads
    evaluate_file(args.file, args.model, args.tokenizer, args.device, args.precision,
                  batch_size=args.batch_size, out=args.out)
    return 0
