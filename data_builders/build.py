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

This module is the local engine; `engines.py` runs the same `build_shard` as Ray tasks (`--engine ray`).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tokenizer.common.config import save_config
from tokenizer.common.errors import InputError
from tokenizer.common.files import atomic_write_text

from .config import DataConfig, Skip, SourceConfig, dist_env, source_name, unit_rng, unit_seed
from .shards import TarShardWriter
from .sources import make_source


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
    return summary(len(todo), len(mine) - len(todo), len(tasks), seqs, imgs, time.perf_counter() - t0)


def log_policies(cfg: DataConfig, log=print) -> None:
    what = {"clamp": "the largest stride that fits; meta stride < requested_stride",
            "skip": "skipped and counted as video_too_short",
            "pad": "every stride-th frame from the start, the last one repeated; meta padded"}
    for scfg in cfg.sources:
        if scfg.type in ("videos", "annotated_video"):
            from .sources.videos import short_video_policy  # "shrink" is clamp's older name

            policy = short_video_policy(scfg.short_video)
            log(f"[{source_name(scfg)}] videos too short for a stride: policy '{policy}' ({what[policy]})")


def summary(built: int, skipped: int, total: int, seqs: int, imgs: int, dt: float) -> dict:
    """The summary `build` returns (and `lvm data build` prints as JSON), whichever engine ran."""
    return {"shards_built": built, "shards_skipped": skipped, "shards_total": total,
            "sequences": seqs, "images": imgs, "seconds": dt,
            "sequences_per_s": seqs / dt if dt > 0 else 0.0, "images_per_s": imgs / dt if dt > 0 else 0.0}


def prepare_build(cfg: DataConfig) -> list[ShardTask]:
    """Check every source's inputs (before anything is written), save the resolved config as
    `{out}/data_config.yaml`; returns the plan (`plan_shards`)."""
    tasks = plan_shards(cfg)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    save_config(cfg, cfg.out, "data_config.yaml")
    return tasks
