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
    import json
    import os
    import resource
    import subprocess
    import sys
    import tempfile

    settings = [int(w) for w in args.workers.split(",")]
    results = {w: [] for w in settings}
    print(f"load average before: {os.getloadavg()[0]:.2f} (cores: {os.cpu_count()})")
    with tempfile.TemporaryDirectory(prefix="lvm-bench-data-") as tmp:
        for r in range(args.rounds):
            for w in settings:
                out = os.path.join(tmp, f"r{r}-w{w}")
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                proc = subprocess.run([sys.executable, "-m", "lvm", "data", "build", args.config, f"out={out}",
                                       f"limit={args.limit}", "--workers", str(w), "--no-progress"],
                                      capture_output=True, text=True)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                if proc.returncode:
                    print(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "build failed")
                    return proc.returncode
                res = json.loads(proc.stdout.strip().splitlines()[-1])
                cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
                res["cpu_s"] = cpu
                results[w].append(res)
                print(f"round {r} workers {w}: {res['sequences']} seq, {res['images']} img in {res['seconds']:.1f} s "
                      f"-> {res['sequences_per_s']:.2f} seq/s, {res['images_per_s']:.1f} img/s, "
                      f"{cpu / max(res['sequences'], 1) * 1000:.1f} CPU-ms/seq, load {os.getloadavg()[0]:.2f}")
    base = None
    for w in settings:
        seq = sum(x["sequences"] for x in results[w]) / sum(x["seconds"] for x in results[w])
        img = sum(x["images"] for x in results[w]) / sum(x["seconds"] for x in results[w])
        base = base or seq
        print(f"workers {w}: {seq:.2f} sequences/s, {img:.1f} images/s, speed-up x{seq / base:.2f} vs workers {settings[0]}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0
