"""Data-building benchmarks (`lvm bench data`).

Throughput: `lvm data build` of one config with 1 vs N worker processes. Each build runs as a subprocess
into a fresh temp folder with `limit` units per source; the settings alternate for `repeats` rounds so that
a change in machine load hits all of them alike. Prints sequences/s and images/s per setting, CPU seconds
per sequence, the speed-up over the first setting, and the load average.

Scale (`--scale 2000,20000`): for each N, N tiny images (+ label maps or partner files) in one flat folder,
then `plan()` and `make()` of a fixed number of units, in this process; prints the time per item for each
N and the ratio between the largest and the smallest N (flat per-item cost: close to 1).
"""

from __future__ import annotations

import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


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


def bench_data(config: str, limit: int = 600, workers: list[int] = (1, 2), repeats: int = 1) -> int:
    """Run the comparison and print it; returns the exit status (a failed build's, else 0)."""
    settings = list(workers)
    results = {w: [] for w in settings}
    print(f"load average before: {os.getloadavg()[0]:.2f} (cores: {os.cpu_count()})")
    with tempfile.TemporaryDirectory(prefix="lvm-bench-data-") as tmp:
        for r in range(repeats):
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


def _png_variants(n: int = 16, px: int = 8) -> tuple[list[bytes], list[bytes]]:
    """`n` distinct tiny RGB PNGs and `n` label-map PNGs, encoded once (then written as bytes: fast)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    rgb, lab = [], []
    for _ in range(n):
        for out, arr in ((rgb, rng.integers(0, 256, (px, px, 3), dtype=np.uint8)),
                         (lab, rng.integers(0, 4, (px, px), dtype=np.uint8))):
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
            out.append(buf.getvalue())
    return rgb, lab


def _write_inputs(root: Path, n: int, source: str):
    """N inputs in flat folders (the worst case for a per-item listing); returns the source's config."""
    from data_builders.config import SourceConfig

    rgb, lab = _png_variants()
    if source == "annotate":
        folders = {"images": ("{}.png", rgb), "labels": ("{}.png", lab)}
        cfg = SourceConfig(type="annotate", path=str(root), tasks=["segmentation", "edges"])
    elif source == "pairs":  # partner names differ, so the template matching is timed too
        folders = {"rain": ("rain-{}.png", rgb), "norain": ("norain-{}.png", rgb)}
        cfg = SourceConfig(type="pairs", path=str(root), image_dir="rain", tasks=["norain"],
                           stem_templates={"rain": "rain-{stem}", "norain": "norain-{stem}"})
    else:
        raise ValueError(f"--source must be annotate or pairs, got {source!r}")
    for name, (pattern, data) in folders.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            (root / name / pattern.format(f"{i:07d}")).write_bytes(data[i % len(data)])
    return cfg


def _time_scale(root: Path, n: int, source: str, units: int, image_size: int) -> dict:
    from data_builders.config import DataConfig, unit_rng
    from data_builders.sources import make_source

    t0 = time.perf_counter()
    scfg = _write_inputs(root, n, source)
    t_write = time.perf_counter() - t0
    data = DataConfig(image_size=image_size, sources=[scfg])
    src = make_source(scfg, data)
    t0 = time.perf_counter()
    planned = src.plan()
    t_plan = time.perf_counter() - t0
    todo = planned[:units]
    src.make(todo[0], unit_rng(0, src.name, 0), 0)  # warm-up: imports, decoder set-up
    t0 = time.perf_counter()
    for i, u in enumerate(todo):
        src.make(u, unit_rng(0, src.name, i), 0)
    t_make = time.perf_counter() - t0
    items = sum(len(u[1]) for u in todo)
    return {"n": n, "write_s": t_write, "plan_s": t_plan, "units": len(todo), "items": items, "make_s": t_make,
            "plan_us_per_image": t_plan / n * 1e6, "make_ms_per_item": t_make / max(items, 1) * 1e3}


def bench_scale(sizes: list[int], source: str = "annotate", units: int = 200, image_size: int = 16) -> int:
    """Time plan() and `units` make() calls of a `source` over N tiny inputs for each N in `sizes`; print
    the time per item per N and the largest-over-smallest ratio (goal: within 1.5x)."""
    print(f"scale benchmark: {source}, sizes {sizes}, {units} units each, output {image_size} px, "
          f"load average {os.getloadavg()[0]:.2f} (cores: {os.cpu_count()})")
    rows = []
    with tempfile.TemporaryDirectory(prefix="lvm-bench-scale-") as tmp:
        for n in sizes:
            r = _time_scale(Path(tmp) / f"n{n}", n, source, units, image_size)
            rows.append(r)
            print(f"N={n}: inputs written in {r['write_s']:.1f} s; plan {r['plan_s']:.3f} s "
                  f"({r['plan_us_per_image']:.1f} us/image); make {r['units']} units, {r['items']} items in "
                  f"{r['make_s']:.2f} s -> {r['make_ms_per_item']:.3f} ms/item")
    lo, hi = min(rows, key=lambda r: r["n"]), max(rows, key=lambda r: r["n"])
    ratio = hi["make_ms_per_item"] / lo["make_ms_per_item"]
    plan_ratio = hi["plan_us_per_image"] / lo["plan_us_per_image"]
    print(f"make time per item, N={hi['n']} over N={lo['n']}: x{ratio:.2f} (goal: <= 1.5); "
          f"plan time per image: x{plan_ratio:.2f}; load average after: {os.getloadavg()[0]:.2f}")
    return 0
