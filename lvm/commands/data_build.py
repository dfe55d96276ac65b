"""Build webdataset shards of image sequences from a data config (stage 1).

Each source's work is cut into shards ({out}/{source}-{j:06d}.tar); every shard gets a stats JSON when
finished, so a killed build can simply be rerun: finished shards are skipped, the rest are rebuilt and
come out byte-identical (seeds depend on the dataset seed and the unit, never on the process).
Work is split by rank/world size (flags, or RANK/WORLD_SIZE from torchrun/accelerate, or SLURM) and
over --workers local processes. `limit=N` caps units per source for quick runs and measurements.

example:
  lvm data build configs/data/demo.yaml out=data/demo/images --workers 2
  lvm data build configs/data/demo.yaml out=/tmp/bench limit=400 --workers 2   # ~1-2 min measurement
"""

from lvm.commands.config_args import add_config_arguments, resolve_config


def add_arguments(p):
    add_config_arguments(p, default="configs/data/demo.yaml")
    p.add_argument("--workers", type=int, default=1, help="local worker processes (each writes whole shards)")
    p.add_argument("--rank", type=int, default=None, help="this machine's rank (default: from the environment)")
    p.add_argument("--world-size", type=int, default=None, help="number of ranks (default: from the environment)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args):
    import json

    from data_builders.build import run_build
    from data_builders.config import DataConfig

    cfg = resolve_config(DataConfig, args)
    if cfg is None:
        return 0
    res = run_build(cfg, workers=args.workers, rank=args.rank, world=args.world_size, progress=not args.no_progress)
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in res.items()}))
    return 0
