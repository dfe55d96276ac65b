"""Turn image-sequence shards into token shards with a tokenizer checkpoint (stage 2).

Every image goes through the tokenizer (batched across sequences) on --device in --precision (both auto
by default: this rank's GPU if any, and bf16 only where the hardware computes it natively); each input
shard becomes a token shard of the same name: per sequence `tokens.npy` (n_images, 256) + the sequence's
JSON (plus tokenizer provenance). Finished token shards are skipped on a rerun. Under
`accelerate launch` (or torchrun / SLURM) each rank takes shards[rank::world] and its own GPU. With
--engine ray a pool of Ray actors, one tokenizer each (one per GPU of the cluster, or --actors N), takes the
shards one at a time; a dead actor is restarted and its shard retried (needs `pip install 'lvm[ray]'`).

OUT/tokens_info.json records the tokenizer (codebook size, resolution, ..., a hash of its weights): a rerun
with another tokenizer is an error naming what differs, since skipping the finished shards would mix two
tokenizers' codes; --fresh removes this command's own token shards (never other files) and tokenizes again.
An --out that would replace an input shard is an error.

example:
  lvm data tokenize data/demo/images --tokenizer runs/tok --out data/demo/tokens
  accelerate launch --num_processes 8 -m lvm data tokenize data/images --tokenizer runs/tok --out data/tokens
  lvm data tokenize /shared/images --tokenizer /shared/tok --out /shared/tokens --engine ray --ray-address auto
"""

from lvm.commands.arg_types import NON_NEGATIVE_INT, POSITIVE_INT
from lvm.commands.data_build import add_engine_arguments
from lvm.commands.hardware_args import add_hardware_arguments


def add_arguments(p):
    p.add_argument("shards", nargs="+", help="image shard folder(s), globs or .tar files")
    p.add_argument("--tokenizer", required=True, help="tokenizer checkpoint (ours, released LVM dir, taming .ckpt)")
    p.add_argument("--out", required=True, help="output folder for token shards")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=64, help="images per tokenizer batch")
    add_hardware_arguments(p, device_help="auto (this rank's GPU if any, else MPS, else CPU), cpu, cuda, cuda:N or mps")
    p.add_argument("--rank", type=NON_NEGATIVE_INT, default=None)
    p.add_argument("--world-size", type=POSITIVE_INT, default=None)
    add_engine_arguments(p)
    p.add_argument("--actors", type=NON_NEGATIVE_INT, default=0,
                   help="--engine ray: tokenizer actors (default: one per GPU of the cluster, else one per node)")
    p.add_argument("--fresh", action="store_true",
                   help="remove the token shards an earlier run left in --out (of any tokenizer) and tokenize again")
    p.add_argument("--no-progress", action="store_true")


def run(args):
    import json

    from data_builders.encode import start_fresh
    from data_builders.engines import run_tokenize

    shards = args.shards if len(args.shards) > 1 else args.shards[0]
    if args.fresh:
        start_fresh(shards, args.tokenizer, args.out, rank=args.rank, world=args.world_size)
    res = run_tokenize(shards, args.tokenizer, args.out,
                       engine=args.engine, batch_size=args.batch_size, device=args.device, precision=args.precision,
                       rank=args.rank, world=args.world_size, ray_address=args.ray_address, actors=args.actors,
                       max_retries=args.max_retries, progress=not args.no_progress)
    print(json.dumps(res))
    return 0
