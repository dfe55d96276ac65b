"""Export token shards to the original LVM training code's JSON lines: one line per visual sequence,
`{"tokens": "<base64 of the little-endian int32 array of all its tokens>"}`.

example:
  lvm data export-jsonl data/demo/tokens --out data/demo.jsonl
"""


def add_arguments(p):
    p.add_argument("tokens", help="token shard folder, glob or .tar")
    p.add_argument("--out", required=True, help="JSONL file to write")
    p.add_argument("--no-progress", action="store_true")


def run(args):
    from data_builders.encode import export_jsonl

    n = export_jsonl(args.tokens, args.out, progress=not args.no_progress)
    print(f"wrote {n} sequences to {args.out}")
    return 0
