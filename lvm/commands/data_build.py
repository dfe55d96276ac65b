"""Build webdataset shards of image sequences from a data config (stage 1).

Each source's work is cut into shards ({out}/{source}-{j:06d}.tar); every shard gets a stats JSON when
finished, so a killed build can simply be rerun: finished shards are skipped, the rest are rebuilt and
come out byte-identical (seeds depend on the dataset seed and the unit, never on the process).
With the local engine (default) work is split by rank/world size (flags, or RANK/WORLD_SIZE from
torchrun/accelerate, or SLURM) and over --workers local processes; with --engine ray every shard is a Ray
task on a Ray cluster (--ray-address, default a local Ray), retried by Ray when its worker dies (needs
`pip install 'lvm[ray]'`; on several nodes, inputs and out on a shared file system). `limit=N` caps units
per source for quick runs and measurements.

OUT/data_config.yaml records the config that shaped the finished shards: a rerun with another one (another
image_size, seed, shard_size, limit, source ...) is an error naming what differs, since skipping the
finished shards would mix two datasets; --fresh removes the build's own shards (tar + stats JSON, never
other files) and rebuilds. The JSON summary counts the bad inputs skipped (items_skipped, by reason).

example:
  lvm data build configs/data/demo.yaml out=data/demo/images --workers 2
  lvm data build configs/data/demo.yaml out=/tmp/bench limit=400 --workers 2   # ~1-2 min measurement
  lvm data build configs/data/demo.yaml out=/shared/demo/images --engine ray --ray-address auto
"""

from lvm.commands.arg_types import NON_NEGATIVE_INT, POSITIVE_INT
from lvm.commands.config_args import add_config_arguments, resolve_config


def add_arguments(p):
    add_config_arguments(p, default="configs/data/demo.yaml")
    p.add_argument("--workers", type=POSITIVE_INT, default=1,
                   help="local worker processes (each writes whole shards)")
    p.add_argument("--rank", type=NON_NEGATIVE_INT, default=None,
                   help="this machine's rank (default: from the environment)")
    p.add_argument("--world-size", type=POSITIVE_INT, default=None,
                   help="number of ranks (default: from the environment)")
    add_engine_arguments(p)
    p.add_argument("--fresh", action="store_true",
                   help="remove the shards an earlier build left in out (of any config) and build from scratch")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_engine_arguments(p):
    """--engine, --ray-address, --max-retries (shared with `lvm data tokenize`)."""
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: this rank's shards on this machine (default); ray: every shard on a Ray cluster")
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="--engine ray: the cluster to join (e.g. auto, or HEAD_IP:6379; default: start a local Ray)")
    p.add_argument("--max-retries", type=NON_NEGATIVE_INT, default=3,
                   help="--engine ray: Ray retries per shard (default 3)")


def run(args):
    import json

    from data_builders.build import start_fresh
    from data_builders.config import DataConfig
    from data_builders.engines import run_build

    cfg = resolve_config(DataConfig, args)
    if cfg is None:
        return 0
    if args.fresh:
        start_fresh(cfg, rank=args.rank, world=args.world_size)
    res = run_build(cfg, engine=args.engine, workers=args.workers, rank=args.rank, world=args.world_size,
                    ray_address=args.ray_address, max_retries=args.max_retries, progress=not args.no_progress)
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in res.items()}))
    return 0
