"""Tokenizer speed: this package's fast path against a taming fp32 eager reference, side by side.

Both paths get the same weights and the same batch of procedurally drawn scenes, in one process, timed
interleaved (reference, ours in each precision, reference, ...) so machine load hits all alike:

- reference: taming's Encoder/Decoder + taming's VectorQuantizer, fp32, eager, default memory format,
  torch.no_grad (what taming's VQModel.encode / decode_code do), with the config's GroupNorm groups
  (taming's own modules, so it is the same network as ours);
- ours: `VQGAN.encode` / `VQGAN.decode` in each --precision (a comma list; `auto` is what the hardware
  policy picks here, and the header says what that is).

Prints images/s for encode and decode, the speed-up ratios, the code agreement (%) and the PSNR of our
reconstruction against the reference's. Without --checkpoint the weights are random; the codebook is
then placed on encoder outputs of other scenes (plus noise), as a trained codebook is, so that codes are
diverse and near-ties happen: otherwise random codebooks collapse onto a few codes and agreement is
meaningless. key=value arguments override the config (nested keys with dots).

Example:
  lvm bench tokenizer --config configs/tokenizer/lvm-f16-8192.yaml --batch-size 4 --repeats 3
  lvm bench tokenizer --config configs/tokenizer/small-128-f8.yaml model.quantizer=l2 model.color_skip=false \\
      --precision auto,fp32,bf16
"""

from __future__ import annotations

from lvm.commands.arg_types import NON_NEGATIVE_INT, POSITIVE_INT, SEED_INT
from lvm.commands.hardware_args import add_hardware_arguments


def add_arguments(p):
    p.add_argument("--config", default="configs/tokenizer/lvm-f16-8192.yaml",
                   help="tokenizer config YAML (its model: section is used)")
    p.add_argument("overrides", nargs="*", default=[], metavar="key=value",
                   help="override config values, e.g. model.quantizer=l2 model.color_skip=false")
    p.add_argument("--checkpoint", default=None, help="load real weights instead of random ones")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=4, help="images per batch (default 4)")
    p.add_argument("--repeats", type=POSITIVE_INT, default=3, help="timed repetitions, the median reported (default 3)")
    p.add_argument("--threads", type=NON_NEGATIVE_INT, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--seed", type=SEED_INT, default=0)
    add_hardware_arguments(p, precision_help="our side's precision(s), a comma list timed side by side (e.g. "
                                             "auto,fp32,bf16); auto = what the hardware policy picks here (see "
                                             "`lvm env`); the reference is always fp32", many=True)


def run(args):
    from lvm.bench.tokenizer import bench_tokenizer

    return bench_tokenizer(config=args.config, overrides=args.overrides, checkpoint=args.checkpoint,
                           batch_size=args.batch_size, repeats=args.repeats, threads=args.threads, seed=args.seed,
                           device=args.device, precision=args.precision)
