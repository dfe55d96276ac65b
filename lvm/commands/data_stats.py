"""Sum the per-shard stats of a built dataset: sequences and images, counts per kind and per source,
and failures per reason (with the first failing items named).

example:
  lvm data stats data/demo/images
  lvm data stats data/demo/images --json
"""


def add_arguments(p):
    p.add_argument("root", help="folder of shards built by 'lvm data build'")
    p.add_argument("--json", action="store_true", help="print the totals as JSON")


def run(args):
    import json

    from data_builders.build import collect_stats

    st = collect_stats(args.root)
    if args.json:
        print(json.dumps(st, indent=1))
        return 0
    print(f"{args.root}: {st['shards']} shards, {st['sequences']} sequences, {st['images']} images")
    for title, key in (("kinds", "kinds"), ("sources", "sources"), ("failures (skipped)", "failures")):
        print(f"{title}:" + ("" if st[key] else " none"))
        for k, v in st[key].items():
            print(f"  {k:<32} {v}")
    for it in st["failed_items"][:10]:
        print(f"  e.g. {it['reason']}: {it['item']}")
    return 0
