"""Data-building throughput (`lvm bench data`): `lvm data build` of one config with 1 vs N worker processes.

Each build runs as a subprocess into a fresh temp folder with `limit` units per source; the settings
alternate for `rounds` rounds so that a change in machine load hits all of them alike. Prints sequences/s
and images/s per setting, CPU seconds per sequence, the speed-up over the first setting, and the load average.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile


def _build_once(config: str, out: str, limit: int, workers: int) -> tuple[dict, int, str]:
    """One `lvm data build` subprocess: (its summary with `cpu_s` added, exit status, last stderr line)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, "-m", "lvm", "data", "build", config, f"out={out}", f"limit={limit}",
                           "--workers", str(workers), "--no-progress"], capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        return {}, proc.returncode, proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "build failed"
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return res, 0, ""


def bench_data(config: str, limit: int = 600, workers: list[int] = (1, 2), rounds: int = 1) -> int:
    """Run the comparison and print it; returns the exit status (a failed build's, else 0)."""
    settings = list(workers)
    results = {w: [] for w in settings}
    print(f"load average before: {os.getloadavg()[0]:.2f} (cores: {os.cpu_count()})")
    with tempfile.TemporaryDirectory(prefix="lvm-bench-data-") as tmp:
        for r in range(rounds):
            for w in settings:
                res, rc, err = _build_once(config, os.path.join(tmp, f"r{r}-w{w}"), limit, w)
                if rc:
                    print(err)
                    return rc
                cpu = res["cpu_s"]
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
