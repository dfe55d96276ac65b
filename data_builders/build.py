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
  place: it marks the shard done. A rerun skips shards with stats, and rebuilds the others from scratch;
- `{out}/data_config.yaml` records the config that shaped the finished shards: a rerun with another one
  (another image_size, seed, source, ...) is an InputError naming what differs, since skipping those shards
  would mix two datasets in one folder; `start_fresh` removes the build's own outputs for a new config;
- bad inputs are skipped and counted per reason in the stats (`failures`), with the first few items named.

This module is the local engine; `engines.py` runs the same `build_shard` as Ray tasks (`--engine ray`).
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import yaml

from lvm_base.config import config_to_yaml, read_yaml_mapping, save_config
from lvm_base.errors import InputError
from lvm_base.files import atomic_write_text

from .config import DataConfig, Skip, SourceConfig, dist_env, source_name, unit_rng, unit_seed
from .shards import TarShardWriter, differences
from .sources import make_source

DATA_CONFIG = "data_config.yaml"  # the record of the config that shaped a folder's shards
_STEM = re.compile(r"[A-Za-z0-9_\-]+-\d{6}")  # `{source}-{j:06d}`: the names of the build's own shards


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


def remove_stale_temps(out: Path, stem: str) -> None:
    """Remove the temp files a killed run of shard `stem` left behind."""
    for stale in out.glob(f".{stem}.*.tmp*"):
        stale.unlink(missing_ok=True)


def build_shard(task: ShardTask, clean_stale: bool = True, on_unit=None) -> dict:
    """Build one shard (tar, then its stats JSON). Runs in a worker process.

    Both files are written to a temp file of their own and renamed into place, and the bytes depend only
    on the task, so two runs of one shard at once (a retried or duplicated task) each commit a complete,
    identical file. `clean_stale=False` leaves other temp files of this shard alone (the Ray engine's
    tasks: a duplicate's temp may be live; the driver cleans up instead). `on_unit(i)` is called after
    unit i of the shard is written."""
    cfg, out = task.cfg, Path(task.cfg.out)
    name = source_name(task.source)
    src = make_source(task.source, cfg)
    tar_path, stats_path = shard_paths(out, task.shard)
    if clean_stale:
        remove_stale_temps(out, task.shard)
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
            if on_unit is not None:
                on_unit(i)
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
    log_policies(cfg, log)
    log(f"rank {rank}/{world}: {len(mine)} of {len(tasks)} shards, {len(mine) - len(todo)} already done, "
        f"{len(todo)} to build with {workers} worker(s) -> {out}")
    t0 = time.perf_counter()
    seqs = imgs = 0
    failures = Counter()
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
            for reason, n in st["failures"].items():  # counts of every shard add up
                failures[reason] = failures.get(reason, 0) + n
            bar.update(1)
            bar.set_postfix(seq=seqs, img=imgs)
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()
    return summary(len(todo), len(mine) - len(todo), len(tasks), seqs, imgs, time.perf_counter() - t0, failures)


def log_policies(cfg: DataConfig, log=print) -> None:
    what = {"clamp": "the largest stride that fits; meta stride < requested_stride",
            "skip": "skipped and counted as video_too_short",
            "pad": "every stride-th frame from the start, the last one repeated; meta padded"}
    for scfg in cfg.sources:
        if scfg.type in ("videos", "annotated_video"):
            from .sources.videos import short_video_policy

            policy = short_video_policy(scfg.short_video)
            log(f"[{source_name(scfg)}] videos too short for a stride: policy '{policy}' ({what[policy]})")


def summary(built: int, skipped: int, total: int, seqs: int, imgs: int, dt: float,
            failures: dict | None = None) -> dict:
    """The summary `build` returns (and `lvm data build` prints as JSON), whichever engine ran.

    `failures` (reason -> count, summed over the shards built now) adds `items_skipped` and
    `skipped_by_reason`: the bad inputs are otherwise only in each shard's stats JSON."""
    res = {"shards_built": built, "shards_skipped": skipped, "shards_total": total,
           "sequences": seqs, "images": imgs, "seconds": dt,
           "sequences_per_s": seqs / dt if dt > 0 else 0.0, "images_per_s": imgs / dt if dt > 0 else 0.0}
    if failures is not None:
        res["items_skipped"] = int(sum(failures.values()))
        res["skipped_by_reason"] = dict(sorted(failures.items()))
    return res


def prepare_build(cfg: DataConfig) -> list[ShardTask]:
    """Check every source's inputs (before anything is written) and that the finished shards in `out` were
    built with this config (`check_fingerprint`), save the resolved config as `{out}/data_config.yaml`;
    returns the plan (`plan_shards`)."""
    tasks = plan_shards(cfg)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    check_fingerprint(cfg)
    save_config(cfg, cfg.out, DATA_CONFIG)
    return tasks


def _fingerprint(d: dict) -> dict:
    # Where the shards go is no part of what they hold (a moved folder, a relative path).
    return {k: v for k, v in d.items() if k != "out"}


def finished_stems(out: Path) -> list[str]:
    """The shards of `out` that a build finished (tar and stats JSON both there)."""
    stems = (p.name[:-len(".stats.json")] for p in Path(out).glob("*.stats.json"))
    return sorted(s for s in stems if _STEM.fullmatch(s) and (Path(out) / f"{s}.tar").is_file())


def check_fingerprint(cfg: DataConfig) -> None:
    """InputError when `out` holds finished shards of another config than `cfg` (see the module docstring).

    A folder without `data_config.yaml` (or without finished shards) has nothing to compare with."""
    out = Path(cfg.out)
    record = out / DATA_CONFIG
    done = finished_stems(out)
    if not done or not record.is_file():
        return
    old = _fingerprint(read_yaml_mapping(record, "data config record"))
    new = _fingerprint(yaml.safe_load(config_to_yaml(cfg)))
    diff = differences(old, new)
    if diff:
        more = f" and {len(diff) - 3} more" if len(diff) > 3 else ""
        raise InputError(f"{out}: its {len(done)} finished shards were built with another config "
                         f"({'; '.join(diff[:3])}{more}; see {record}): rerun with --fresh to remove them and "
                         f"rebuild, or choose another out=")


def _remove_shard(out: Path, stem: str) -> int:
    """Remove shard `stem`'s files (stats first: a kill in between leaves a shard that is rebuilt)."""
    tar, stats = shard_paths(out, stem)
    n = 0
    for p in (stats, tar, out / f".{stem}.attempts"):
        if p.is_file():
            p.unlink()
            n += 1
    remove_stale_temps(out, stem)
    return n


def start_fresh(cfg: DataConfig, rank: int | None = None, world: int | None = None) -> int:
    """`lvm data build --fresh`: remove the build's own outputs in `out` (shards, their stats and temp
    files) and record `cfg` as the folder's config; returns the number of files removed.

    Other files are never touched: only `{source}-{j:06d}.tar` with its `.stats.json`, or a tar of that name
    from a source of the old or the new config. Each rank removes its own shards of the new plan and rank 0
    the shards outside it, so ranks that start at different times never remove each other's new shards."""
    tasks = plan_shards(cfg)  # bad inputs end here, before anything is removed
    env_rank, env_world = dist_env()
    rank = env_rank if rank is None else rank
    world = env_world if world is None else world
    out = Path(cfg.out)
    if not out.is_dir():
        return 0
    removed = sum(_remove_shard(out, t.shard) for t in tasks[rank::world])
    if rank == 0:
        planned = {t.shard for t in tasks}
        names = {source_name(s) for s in cfg.sources}
        record = out / DATA_CONFIG
        if record.is_file():
            try:
                old = read_yaml_mapping(record, "data config record").get("sources") or []
                names |= {str(s.get("name") or s.get("type")) for s in old if isinstance(s, dict)}
            except InputError:
                pass  # an unreadable record names no sources; stats files still mark the build's shards
        for p in sorted(out.glob("*.tar")):
            stem = p.name[:-len(".tar")]
            own = (out / f"{stem}.stats.json").is_file() or stem.rpartition("-")[0] in names
            if stem not in planned and _STEM.fullmatch(stem) and own:
                removed += _remove_shard(out, stem)
        for p in sorted(out.glob("*.stats.json")):  # a stats file whose tar is gone
            stem = p.name[:-len(".stats.json")]
            if stem not in planned and _STEM.fullmatch(stem):
                removed += _remove_shard(out, stem)
    save_config(cfg, out, DATA_CONFIG)
    return removed
