"""Data-building throughput: `lvm data build` of a config with 1 vs N worker processes, side by side.

Runs the builds as subprocesses, alternating settings for `--rounds` rounds (so a change in machine load
hits both alike), each into a fresh temp folder with `limit` units per source. Prints sequences/s and
images/s per setting, CPU seconds per sequence, the speed-up over one worker, and the load average.

example:
  lvm bench data configs/data/demo.yaml --limit 600 --workers 1,2 --rounds 2   # ~2-4 min on 2 cores
"""


def add_arguments(p):
    p.add_argument("config", nargs="?", default="configs/data/demo.yaml", help="data config to build")
    p.add_argument("--limit", type=int, default=600, help="units (sequences for builtin) per source per build")
    p.add_argument("--workers", default="1,2", help="comma-separated worker counts to compare")
    p.add_argument("--rounds", type=int, default=1, help="alternating rounds per setting")


def run(args):
    from lvm.bench.data import bench_data

    return bench_data(args.config, limit=args.limit, workers=[int(w) for w in args.workers.split(",")],
                      rounds=args.rounds)
