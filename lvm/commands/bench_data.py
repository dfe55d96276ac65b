"""Data-building throughput: `lvm data build` of a config with 1 vs N worker processes, side by side.

Runs the builds as subprocesses, alternating settings for `--repeats` rounds (so a change in machine load
hits both alike), each into a fresh temp folder with `limit` units per source. Prints sequences/s and
images/s per setting, CPU seconds per sequence, the speed-up over one worker, and the load average.

With `--scale N1,N2,...`: how a local-file source's cost grows with the folder size instead. For each N it
writes N tiny images (+ label maps or partner files) into a temp folder, times plan() and `--units`
make() calls in this process, and prints the time per item per N and the ratio between the largest and
the smallest N (goal: within 1.5x).

examples:
  lvm bench data configs/data/demo.yaml --limit 600 --workers 1,2 --repeats 2  # ~2-4 min on 2 cores
  lvm bench data --scale 2000,20000 --source annotate                          # ~1 min
"""

from lvm.commands.arg_types import POSITIVE_INT


def add_arguments(p):
    p.add_argument("config", nargs="?", default="configs/data/demo.yaml", help="data config to build")
    p.add_argument("--limit", type=POSITIVE_INT, default=600, help="units (sequences for builtin) per source per build")
    p.add_argument("--workers", default="1,2", help="comma-separated worker counts to compare")
    p.add_argument("--repeats", type=POSITIVE_INT, default=1,
                   help="builds per setting, the settings alternating (default 1)")
    p.add_argument("--scale", default="", help="comma-separated input counts: time plan/make per item instead")
    p.add_argument("--source", default="annotate", choices=["annotate", "pairs"], help="--scale: source type")
    p.add_argument("--units", type=POSITIVE_INT, default=200, help="--scale: make() calls timed per input count")


def run(args):
    from lvm.bench.data import bench_data, bench_scale

    if args.scale:
        return bench_scale([int(n) for n in args.scale.split(",")], source=args.source, units=args.units)

    return bench_data(args.config, limit=args.limit, workers=[int(w) for w in args.workers.split(",")],
                      repeats=args.repeats)
