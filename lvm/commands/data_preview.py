"""Write a PNG grid of sample sequences from image shards: `--per-kind` sequences of every kind found
(one row each, labelled kind/task), the first ones in shard order.

example:
  lvm data preview data/demo/images --out preview.png --per-kind 2
"""

from lvm.commands.arg_types import POSITIVE_INT


def add_arguments(p):
    p.add_argument("shards", help="shard folder, glob or .tar file")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--per-kind", type=POSITIVE_INT, default=2, help="rows per sequence kind (and per task)")
    p.add_argument("--max-shards", type=POSITIVE_INT, default=200, help="stop looking after this many shards")


def run(args):
    from data_builders.preview import preview

    path, rows, skipped = preview(args.shards, args.out, per_kind=args.per_kind, max_shards=args.max_shards)
    print(f"wrote {path} ({rows} rows, {skipped} samples skipped)")
    return 0
