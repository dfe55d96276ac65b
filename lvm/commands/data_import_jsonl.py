"""Import the original LVM release's token JSON lines into token shards for `lvm train` (the inverse of
`lvm data export-jsonl`). Each line `{"tokens": "<base64 of a little-endian int32 array>"}` is one visual
sequence of len / codes-per-image images (the released rows: 4096 tokens = 16 images x 256 codes); a row
of more than 16 images is split at image boundaries. Bad lines are skipped with a warning naming
FILE:LINE and counted in the summary.

Codebook size: --codebook-size if given, else the one in a tokens_info.json in the JSONL's folder, else
8192 (the released model's). Ids outside [0, codebook size) make a line bad.

OUT keeps what is there: shards are named after the JSONL file (tokens.jsonl -> tokens-000000.tar ...) and
each import is recorded in OUT/<name>.import.json, so a rerun replaces that file's earlier import and
several JSONL files can be imported into one folder. Token shards that no import wrote (the output of
`lvm data tokenize`, say), an earlier import of another file of the same name, or earlier imports with
another codebook size make it an error; it never removes them (--fresh replaces earlier imports only).

example:
  lvm data import-jsonl release/tokens.jsonl --out data/release/tokens
  lvm train configs/train/tiny.yaml data.shards=data/release/tokens
"""

from lvm.commands.arg_types import POSITIVE_INT


def add_arguments(p):
    from data_builders.import_jsonl import DEFAULT_SHARD_SIZE

    p.add_argument("jsonl", help='JSON lines file, {"tokens": base64 int32} per line')
    p.add_argument("--out", required=True, help="folder to write the token shards and tokens_info.json to")
    p.add_argument("--codes-per-image", type=POSITIVE_INT, default=256, help="tokens per image (default: 256)")
    p.add_argument("--codebook-size", type=POSITIVE_INT, default=None,
                   help="K: ids must be in [0, K) (default: tokens_info.json beside the JSONL, else 8192)")
    p.add_argument("--shard-size", type=POSITIVE_INT, default=DEFAULT_SHARD_SIZE,
                   help=f"sequences per shard (default: {DEFAULT_SHARD_SIZE})")
    p.add_argument("--fresh", action="store_true",
                   help="remove the earlier imports in OUT (their shards, records and tokens_info.json) first; "
                        "other files are never removed")
    p.add_argument("--no-progress", action="store_true")


def run(args):
    from data_builders.import_jsonl import import_jsonl

    s = import_jsonl(args.jsonl, args.out, codes_per_image=args.codes_per_image, codebook_size=args.codebook_size,
                     shard_size=args.shard_size, progress=not args.no_progress, fresh=args.fresh)
    bad = ", ".join(f"{k} {v}" for k, v in s["skipped_by_reason"].items())
    print(f"imported {s['sequences']} sequences ({s['images']} images, codebook {s['codebook_size']}) from "
          f"{s['lines']} lines of {args.jsonl} into {s['shards']} shards in {args.out}; "
          f"skipped {s['skipped']} bad lines" + (f" ({bad})" if bad else ""))
    return 0
