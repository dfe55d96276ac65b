"""Stage 1: sources -> visual sequences -> webdataset image shards, resumable, split across processes.

How work is cut (so any number of machines and workers build one identical dataset):
- each source's `plan()` lists its *units* (a file, a video x stride, an orbit, one built-in sequence ...)
  in a fixed order; unit i of source S is built with its own RNG seeded by (dataset seed, S, i), never
  by process, so the same unit always gives the same bytes wherever it runs;
- consecutive units are grouped into shards (`shard_size` units each): `{out}/{S}-{j:06d}.tar`;
- the list of all shards is split by rank (`shards[rank::world]`, rank/world from flags or from the
  environment of torchrun/accelerate (RANK/WORLD_SIZE) or SLURM (SLURM_PROCID/SLURM_NTASKS)), then over
  `--workers` local processes, each writing whole shards with its own writer;
- a shard's stats JSON (`{S}-{j:06d}.stats.json`) is written after its tar is complete and renamed into
  place: it marks the shard done. A rerun skips shards with stats, and rebuilds the others from scratch.
- bad inputs are skipped and counted per reason in the stats (`failures`), with the first few items named.
"""

from __future__ import annotations

import json
import os
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tokenizer.common.errors import InputError
from tokenizer.common.files import atomic_write_text

from .shards import TarShardWriter


@dataclass
class SourceConfig:
    """One source of visual sequences. `type` picks the builder; unused keys are ignored by that type."""

    type: str = "builtin"  # builtin | images | class_groups | videos | multiview_mesh | multiview_folder | pairs | annotate | annotated_video
    name: str = ""  # shard/key prefix; defaults to the type
    path: str = ""  # folder, list file, or shard spec of local inputs
    count: int = 0  # number of sequences (builtin); 0 = one pass over the inputs
    split: str = "train"  # builtin objects: train | heldout | all
    kinds: dict = field(default_factory=dict)  # builtin: kind -> weight
    n_frames: int = 16  # video frames per sequence
    strides: list = field(default_factory=lambda: [10, 20, 30])  # video strides (frames)
    short_video: str = "skip"  # video too short for a stride: skip (count it) | shrink (largest stride that fits)
    group_sizes: list = field(default_factory=lambda: [2, 4, 8, 16])  # class_groups
    views: int = 16  # multi-view: views per sequence (consecutive views of the orbit)
    orbit_views: int = 24  # multi-view: views in the full orbit (360 / step)
    step_deg: float = 15.0
    # builtin orbits: forward (azimuth grows) | both (each sequence's direction at random, so that a model
    # has to read the rotation from the frames it is shown rather than assume it)
    orbit_direction: str = "forward"
    orbits_per_object: int = 1
    up: str = "z"  # multiview_mesh: up axis of the OBJ files (y = rotate upright)
    tasks: list = field(default_factory=list)  # pairs / annotate / builtin tasks
    task_weights: dict = field(default_factory=dict)  # builtin pairs: task -> weight (unlisted tasks: 1)
    pairs_per_sequence: int = 8
    tuples: bool = False  # k annotations of one image as (image, a1..ak) m-tuples instead of pairs
    image_dir: str = "images"  # pairs: folder of inputs; annotation folders are named by `tasks`
    labels_dir: str = "labels"  # annotate: integer label maps (segmentation)
    depth_dir: str = "depth"  # annotate: depth maps (16-bit PNG / .npy) for depth and normals
    json_dir: str = "annotations"  # annotate: {"boxes": [[x0,y0,x1,y1,label]], "keypoints": [[[x,y,v]...]]}
    fov_deg: float = 60.0  # annotate: camera FOV used to turn depth into normals
    frames_dir: str = "frames"  # annotated_video: frame folders; annotation frame folders are under `tasks[0]`
    layouts: list = field(default_factory=lambda: ["interleaved", "grouped"])  # annotated videos


@dataclass
class DataConfig:
    out: str = "data/out"
    seed: int = 0
    image_size: int = 256
    image_format: str = "png"  # png | jpg
    shard_size: int = 64  # units per shard
    limit: int = 0  # at most this many units per source (0 = all): quick runs and benchmarks
    sources: list[SourceConfig] = field(default_factory=list)

    def __post_init__(self):
        if self.image_format not in ("png", "jpg", "jpeg"):
            raise InputError(f"image_format must be png or jpg, got {self.image_format!r}")
        if self.shard_size < 1 or self.image_size < 8:
            raise InputError("shard_size must be >= 1 and image_size >= 8")
        names = [source_name(s) for s in self.sources]
        if len(set(names)) != len(names):
            raise InputError(f"source names must be unique, got {names} (set `name:` on each source)")


def source_name(s: SourceConfig) -> str:
    name = s.name or s.type
    if not name.replace("_", "").replace("-", "").isalnum():
        raise InputError(f"source name {name!r} may only contain letters, digits, '_' and '-'")
    return name


def unit_rng(seed: int, name: str, index: int, stream: int = 0) -> np.random.Generator:
    """The RNG of one unit: depends on the dataset seed, the source and the unit only (not the process)."""
    return np.random.default_rng([seed, zlib.crc32(name.encode()), index, stream])


def unit_seed(seed: int, name: str, index: int) -> int:
    return int(unit_rng(seed, name, index, stream=7).integers(2**31))


class Skip(Exception):
    """A bad input item: skipped and counted under `reason` (short, snake_case)."""

    def __init__(self, reason: str, item: str = ""):
        super().__init__(f"{reason}: {item}")
        self.reason, self.item = reason, str(item)


def dist_env() -> tuple[int, int]:
    """(rank, world size) from torchrun / accelerate / SLURM environment variables, else (0, 1)."""
    for r, w in (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS")):
        if r in os.environ and w in os.environ:
            return int(os.environ[r]), int(os.environ[w])
    return 0, 1


@dataclass
class ShardTask:
    cfg: DataConfig
    source: SourceConfig
    shard: str  # file stem, e.g. "builtin-000003"
    first: int  # index of the shard's first unit
    units: list


def shard_paths(out: Path, stem: str) -> tuple[Path, Path]:
    return out / f"{stem}.tar", out / f"{stem}.stats.json"


def is_done(out: Path, stem: str) -> bool:
    tar, stats = shard_paths(out, stem)
    return tar.is_file() and stats.is_file()


def plan_shards(cfg: DataConfig) -> list[ShardTask]:
    """Every shard of the dataset, in a fixed order (the same list on every rank)."""
    from .sources import make_source

    if not cfg.sources:
        raise InputError("the data config lists no sources")
    tasks = []
    for scfg in cfg.sources:
        name = source_name(scfg)
        units = make_source(scfg, cfg).plan()
        if cfg.limit:
            units = units[: cfg.limit]
        for j, start in enumerate(range(0, len(units), cfg.shard_size)):
            tasks.append(ShardTask(cfg, scfg, f"{name}-{j:06d}", start, units[start:start + cfg.shard_size]))
    return tasks


def build_shard(task: ShardTask) -> dict:
    """Build one shard (tar, then its stats JSON). Runs in a worker process."""
    from .sources import make_source

    cfg, out = task.cfg, Path(task.cfg.out)
    name = source_name(task.source)
    src = make_source(task.source, cfg)
    tar_path, stats_path = shard_paths(out, task.shard)
    for stale in out.glob(f".{task.shard}.*.tmp*"):  # temp files of a killed run of this shard
        stale.unlink(missing_ok=True)
    kinds, failures, failed = Counter(), Counter(), []
    n_seq = n_img = 0
    t0 = time.perf_counter()
    with TarShardWriter(tar_path) as w:
        for i, unit in enumerate(task.units):
            index = task.first + i
            rng = unit_rng(cfg.seed, name, index)
            seed = unit_seed(cfg.seed, name, index)
            try:
                items = src.make(unit, rng, seed)
            except Skip as e:
                items = [e]
            k = 0
            for item in items:
                if isinstance(item, Skip):
                    failures[item.reason] += 1
                    if len(failed) < 50:
                        failed.append({"reason": item.reason, "item": item.item})
                    continue
                item.meta.setdefault("seed", seed)
                item.meta["unit"] = index
                w.write(item.to_sample(f"{name}-{index:08d}-{k:03d}", cfg.image_format))
                k += 1
                n_seq += 1
                n_img += len(item.images)
                kinds[item.kind] += 1
    stats = {"shard": tar_path.name, "source": name, "type": task.source.type, "units": len(task.units),
             "sequences": n_seq, "images": n_img, "kinds": dict(sorted(kinds.items())),
             "failures": dict(sorted(failures.items())), "failed_items": failed,
             "seconds": round(time.perf_counter() - t0, 3)}
    atomic_write_text(stats_path, json.dumps(stats, indent=1, sort_keys=True))
    return stats


def build(cfg: DataConfig, workers: int = 1, rank: int | None = None, world: int | None = None,
          progress: bool = True, log=print, tasks: list[ShardTask] | None = None) -> dict:
    """Build this rank's shards of the dataset (skipping finished ones); returns a summary.

    `tasks`: the output of `plan_shards(cfg)` when the caller already planned (to check inputs first)."""
    env_rank, env_world = dist_env()
    rank = env_rank if rank is None else rank
    world = env_world if world is None else world
    if not 0 <= rank < world:
        raise InputError(f"rank {rank} is not in [0, world size {world})")
    tasks = plan_shards(cfg) if tasks is None else tasks
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    mine = tasks[rank::world]
    todo = [t for t in mine if not is_done(out, t.shard)]
    for scfg in cfg.sources:
        if scfg.type == "videos":
            log(f"[{source_name(scfg)}] videos too short for a stride: policy '{scfg.short_video}' "
                f"({'skipped and counted as video_too_short' if scfg.short_video == 'skip' else 'use the largest stride that fits, recorded in meta'})")
    log(f"rank {rank}/{world}: {len(mine)} of {len(tasks)} shards, {len(mine) - len(todo)} already done, "
        f"{len(todo)} to build with {workers} worker(s) -> {out}")
    t0 = time.perf_counter()
    seqs = imgs = 0
    from tqdm import tqdm

    bar = tqdm(total=len(todo), unit="shard", disable=not progress, dynamic_ncols=True)
    if workers <= 1:
        results = map(build_shard, todo)
        pool = None
    else:
        import multiprocessing as mp

        # spawn: workers start clean (no inherited pybullet client or threads).
        pool = mp.get_context("spawn").Pool(workers)
        results = pool.imap_unordered(build_shard, todo)
    try:
        for st in results:
            seqs += st["sequences"]
            imgs += st["images"]
            bar.update(1)
            bar.set_postfix(seq=seqs, img=imgs)
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()
    dt = time.perf_counter() - t0
    return {"shards_built": len(todo), "shards_skipped": len(mine) - len(todo), "shards_total": len(tasks),
            "sequences": seqs, "images": imgs, "seconds": dt,
            "sequences_per_s": seqs / dt if dt > 0 else 0.0, "images_per_s": imgs / dt if dt > 0 else 0.0}


def collect_stats(root: str | os.PathLike) -> dict:
    """Sum every `*.stats.json` under `root`: counts per kind and source, failures per reason."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: not a directory")
    files = sorted(root.rglob("*.stats.json"))
    if not files:
        raise InputError(f"{root}: no shard stats (*.stats.json) found; was it built with 'lvm data build'?")
    total = {"shards": 0, "sequences": 0, "images": 0, "kinds": Counter(), "sources": Counter(),
             "failures": Counter(), "failed_items": []}
    for f in files:
        try:
            st = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise InputError(f"{f}: unreadable stats file ({e})") from None
        total["shards"] += 1
        total["sequences"] += st.get("sequences", 0)
        total["images"] += st.get("images", 0)
        total["kinds"].update(st.get("kinds", {}))
        total["sources"][st.get("source", "?")] += st.get("sequences", 0)
        total["failures"].update(st.get("failures", {}))
        total["failed_items"].extend(st.get("failed_items", [])[: max(0, 20 - len(total["failed_items"]))])
    for k in ("kinds", "sources", "failures"):
        total[k] = dict(sorted(total[k].items()))
    return total
