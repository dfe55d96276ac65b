"""Training throughput of lvm train's step against a plain reference loop, side by side in one process.

Both sides train the same model (same initial weights) on the same visual sequences each step (a
demo-like mix of lengths: half full-context sequences, half 1 .. n-1 images):
  ours       lvm train's step: sequences packed into rows (lvm.train.packing), packed "varlen" attention,
             accelerate mixed precision as the policy resolves each `--precision` (auto: bf16 where the
             hardware computes it natively, else fp32), token-mean loss, AdamW + clip; one side per
             distinct precision;
  reference  the same HF LlamaForCausalLM in fp32, eager mode (no compile, HF's default attention),
             batches of `--ref-batch` sequences padded to the longest, labels -100 on padding, AdamW + clip.
Steps alternate (ours..., ref, then ref, ...ours) so machine load affects every side alike. tokens/s counts
real (non-padding) tokens; MFU = model FLOPs (lvm.train.flops: 6 x matmul params per token + causal attention)
per second over this device's matmul peak in the dtype that side computes in (fp32 for the reference and
fp32 ours, bf16 for bf16 ours), measured here.

examples:
  lvm bench train --model tiny
  lvm bench train --model tiny --precision auto,fp32,bf16 --steps 2
  lvm bench train --model tiny,100m --seq-len 1024 --steps 3
"""

from lvm.commands.arg_types import NON_NEGATIVE_INT, POSITIVE_INT, SEED_INT
from lvm.commands.hardware_args import add_hardware_arguments


def add_arguments(p):
    p.add_argument("--model", default="tiny,100m",
                   help="comma-separated model configs: names in configs/model/ or YAML paths (default tiny,100m)")
    p.add_argument("--seq-len", type=POSITIVE_INT, default=None,
                   help="row length in tokens (multiple of 256; default: 4096 for tiny, 1024 otherwise)")
    p.add_argument("--rows", type=POSITIVE_INT, default=2, help="packed rows of tokens per step (default 2)")
    p.add_argument("--ref-batch", type=POSITIVE_INT, default=4, help="sequences per padded reference batch (default 4)")
    p.add_argument("--steps", type=POSITIVE_INT, default=3, help="timed steps per side (default 3)")
    p.add_argument("--warmup", type=NON_NEGATIVE_INT, default=1, help="untimed steps per side first (default 1)")
    p.add_argument("--threads", type=NON_NEGATIVE_INT, default=0,
                   help="torch threads (default 0 = auto: 1 when the load average exceeds the cores, since "
                        "multi-threaded kernels then stall on descheduled threads at every op)")
    p.add_argument("--seed", type=SEED_INT, default=0)
    p.add_argument("--out", default=None, help="also write the results as JSON")
    add_hardware_arguments(p, precision_help="comma-separated precisions of lvm train's side (default auto: what "
                                             "lvm train picks here; e.g. auto,fp32,bf16 compares them)", many=True)


def run(args):
    from lvm.bench.train import bench_train

    return bench_train(model=args.model, seq_len=args.seq_len, rows=args.rows, ref_batch=args.ref_batch,
                       steps=args.steps, warmup=args.warmup, threads=args.threads, seed=args.seed, out=args.out,
                       device=args.device, precision=args.precision)
