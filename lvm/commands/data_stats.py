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
    from data_builders.stats import stats_report

    print(stats_report(args.root, as_json=args.json))
    return 0
