"""Where the shards of `lvm data build` / `lvm data tokenize` run: engine `local` (default) or `ray`.

- local: this process takes its rank's shards (`shards[rank::world]`, rank/world from flags or from the
  torchrun/accelerate (RANK/WORLD_SIZE) or SLURM (SLURM_PROCID/SLURM_NTASKS) environment) and builds them
  on `--workers` processes (`build.build`) or tokenizes them with one tokenizer (`encode.tokenize`). A rank
  that dies leaves its shards to a rerun of that rank.
- ray: one driver hands every unfinished shard of the dataset to a Ray cluster (`ray_address`, e.g. "auto"
  for the cluster `ray start` made; default: start a local Ray here). Building: one Ray task per shard
  (1 CPU each), retried by Ray when its worker process dies (`max_retries`) or it raises
  (`retry_exceptions`). Tokenizing: a pool of actors, one tokenizer loaded in each (one actor per GPU with
  `num_gpus=1` on a cluster with GPUs, else CPU actors sharing the cluster's CPUs), fed one shard at a time
  with images batched as in the local engine; a dead actor is restarted and its shard retried.

Why retries and duplicates are safe: a shard's bytes depend only on its task (seeds come from the dataset
seed and the unit, never the process); its tar, then its stats JSON (which marks it done), are each
written to a temp file of their own and renamed into place, so whichever attempt of a shard renames last
leaves a complete file with the same bytes, and a killed attempt leaves only a temp file; a task whose
shard is already done returns the recorded stats without building; each shard is counted once, by the
driver, from the one result Ray returns for it. The driver removes the temp files of killed attempts
before and after the run (tasks never do: a duplicate's temp file may be live). A rerun skips finished
shards, as with the local engine.

Inputs and outputs are read and written by the workers: on a multi-node cluster they must be on a shared
file system at the same path on every node; tasks run in the driver's working directory where it exists,
so relative paths mean the same there. Ray is imported only for `engine="ray"` (`pip install 'lvm[ray]'`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

from lvm_base.errors import InputError
from lvm_base.hardware import PRECISIONS, precision_name

from .build import (build_shard, is_done, log_policies, prepare_build, remove_stale_temps, build,
                    shard_paths, summary as build_summary)
from .config import DataConfig
from .encode import plan_tokenize, summary as tokenize_summary, tokenize as local_tokenize, tokenize_shard, \
    tokens_info, write_tokens_info

ENGINES = ("local", "ray")
# Test hook: the Ray task (build: after the shard's first unit) or the tokenizer actor (tokenize: as it takes
# the shard) working on shard $LVM_TEST_CRASH_SHARD (a file stem) kills its process, on the first attempt
# only: the attempt that finds no file at $LVM_TEST_CRASH_MARKER makes it, then exits. Read by the driver.
CRASH_SHARD_ENV, CRASH_MARKER_ENV = "LVM_TEST_CRASH_SHARD", "LVM_TEST_CRASH_MARKER"


def _test_crash():
    if os.environ.get(CRASH_SHARD_ENV) and os.environ.get(CRASH_MARKER_ENV):
        return os.environ[CRASH_SHARD_ENV], os.environ[CRASH_MARKER_ENV]
    return None


def _check(engine: str, rank, world, ray_address) -> None:
    if engine not in ENGINES:
        raise InputError(f"--engine {engine}: expected one of {', '.join(ENGINES)}")
    if engine == "local" and ray_address:
        raise InputError(f"--ray-address {ray_address} is for --engine ray")
    if engine == "ray" and (rank is not None or world is not None):
        raise InputError("--rank/--world-size split the shards between local-engine processes; with --engine ray "
                         "one driver hands every shard to the Ray cluster (run it once)")


def init_ray(address: str | None = None):
    """(the ray module, whether this call started the session): joins a running session, connects to the
    cluster at `address`, or starts a local Ray."""
    try:
        import ray
    except ImportError:
        raise InputError("--engine ray needs Ray: pip install 'lvm[ray]' (or pip install 'ray>=2.9')") from None
    if ray.is_initialized():
        return ray, False
    import logging

    local = not address and not os.environ.get("RAY_ADDRESS")
    try:
        ray.init(address=address or None, logging_level=logging.WARNING,
                 **({"include_dashboard": False} if local else {}))
    except ConnectionError as e:
        raise InputError(f"--ray-address {address}: cannot reach a Ray cluster there ({e})") from None
    return ray, True


def _error(e: BaseException) -> str:
    cause = getattr(e, "cause", None) or e
    return f"{type(cause).__name__}: {str(cause).strip().splitlines()[-1] if str(cause).strip() else ''}"


# ---------------------------------------------------------------- build

def run_build(cfg: DataConfig, engine: str = "local", workers: int = 1, rank: int | None = None,
              world: int | None = None, ray_address: str | None = None, max_retries: int = 3,
              progress: bool = True, log=print) -> dict:
    """`lvm data build`: check the inputs, save `{out}/data_config.yaml`, build the unfinished shards with
    `engine`; returns the summary (`build.summary`; the Ray engine adds `retries`, the attempts Ray re-ran)."""
    _check(engine, rank, world, ray_address)
    if engine == "local":
        return build(cfg, workers=workers, rank=rank, world=world, progress=progress, log=log,
                     tasks=prepare_build(cfg))
    tasks = prepare_build(cfg)  # inputs are checked before Ray starts
    ray, started = init_ray(ray_address)
    try:
        return _ray_build(ray, cfg, tasks, max_retries, progress, log)
    finally:
        if started:
            ray.shutdown()


def _attempts_path(out: Path, stem: str) -> Path:
    return out / f".{stem}.attempts"


def _crash_hook(stem: str, crash):
    if not crash or crash[0] != stem:
        return None
    marker = Path(crash[1])

    def hook(unit):
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            os._exit(1)
    return hook


def build_shard_attempt(task, cwd: str | None = None, crash=None) -> dict:
    """One attempt at one shard (the body of the Ray task): build it unless done; returns its stats plus
    `attempts`, the number of attempts at it (each appends a line to `.{stem}.attempts` in `out`)."""
    if cwd and os.path.isdir(cwd):
        os.chdir(cwd)
    out = Path(task.cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    att = _attempts_path(out, task.shard)
    with open(att, "a") as f:
        f.write(f"{os.getpid()}\n")
    if is_done(out, task.shard):  # a duplicate, or a retry of an attempt that finished
        stats = json.loads(shard_paths(out, task.shard)[1].read_text())
    else:
        stats = build_shard(task, clean_stale=False, on_unit=_crash_hook(task.shard, crash))
    try:
        attempts = max(1, len(att.read_text().splitlines()))
        att.unlink()
    except FileNotFoundError:  # a duplicate finished first and removed it
        attempts = 1
    return {**stats, "attempts": attempts}


def _ray_build(ray, cfg: DataConfig, tasks: list, max_retries: int, progress: bool, log) -> dict:
    from tqdm import tqdm

    out = Path(cfg.out).resolve()
    cfg = dataclasses.replace(cfg, out=str(out))
    todo = [dataclasses.replace(t, cfg=cfg) for t in tasks if not is_done(out, t.shard)]
    log_policies(cfg, log)
    cpus = int(ray.cluster_resources().get("CPU", 0))
    log(f"ray: {len(tasks)} of {len(tasks)} shards, {len(tasks) - len(todo)} already done, {len(todo)} to build "
        f"as Ray tasks on {cpus} CPU(s) -> {out}")
    for t in todo:
        remove_stale_temps(out, t.shard)
        _attempts_path(out, t.shard).unlink(missing_ok=True)
    crash = _test_crash()
    remote = ray.remote(build_shard_attempt).options(num_cpus=1, max_retries=max_retries, retry_exceptions=True)
    t0 = time.perf_counter()
    refs = {remote.remote(t, os.getcwd(), crash): t.shard for t in todo}
    pending, failed = list(refs), []
    seqs = imgs = retries = 0
    failures: dict = {}
    bar = tqdm(total=len(todo), unit="shard", disable=not progress, dynamic_ncols=True)
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            for ref in ready:
                try:
                    st = ray.get(ref)
                except Exception as e:  # Ray's retries are spent: keep going, report at the end
                    failed.append(f"{refs[ref]} ({_error(e)})")
                    continue
                seqs += st["sequences"]
                imgs += st["images"]
                retries += st.get("attempts", 1) - 1
                for reason, n in st.get("failures", {}).items():
                    failures[reason] = failures.get(reason, 0) + n
                bar.update(1)
                bar.set_postfix(seq=seqs, img=imgs)
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    finally:
        bar.close()
        for t in todo:
            remove_stale_temps(out, t.shard)
    res = build_summary(len(todo) - len(failed), len(tasks) - len(todo), len(tasks), seqs, imgs,
                        time.perf_counter() - t0, failures)
    res["retries"] = retries
    if failed:
        raise RuntimeError(f"{len(failed)} shard(s) failed after {max_retries} retries: {'; '.join(failed[:5])}; "
                           f"the {res['shards_built']} built are kept, rerun to build the rest")
    return res


# ---------------------------------------------------------------- tokenize

def run_tokenize(shards, tokenizer_path, out, engine: str = "local", batch_size: int = 64,
                 device: str | None = "auto", precision: str | None = "auto", rank: int | None = None,
                 world: int | None = None, ray_address: str | None = None, actors: int = 0, max_retries: int = 3,
                 progress: bool = True, log=print) -> dict:
    """`lvm data tokenize` with `engine`; returns the summary (`encode.summary`). With Ray: `actors`
    tokenizers (0 = one per GPU of the cluster, or one per node without GPUs), each restarted up to
    `max_retries` times."""
    _check(engine, rank, world, ray_address)
    if engine == "local":
        return local_tokenize(shards, tokenizer_path, out, batch_size=batch_size, device=device, precision=precision,
                              rank=rank, world=world, progress=progress, log=log)
    if precision_name(precision) not in PRECISIONS:
        raise InputError(f"--precision {precision}: expected one of {', '.join(PRECISIONS)}")
    out = Path(out).resolve()
    _, pairs = plan_tokenize(shards, out)  # a spec that names no shards ends here, before Ray starts
    ray, started = init_ray(ray_address)
    try:
        return _ray_tokenize(ray, pairs, str(tokenizer_path), out, batch_size, device, precision, actors,
                             max_retries, progress, log)
    finally:
        if started:
            ray.shutdown()


class TokenizerWorker:
    """One tokenizer in one Ray actor (`ray.remote(TokenizerWorker)`): encodes whole shards."""

    def __init__(self, tokenizer_path: str, device, precision, cwd: str | None = None, threads: int = 0,
                 crash=None):
        self.crash = crash
        if cwd and os.path.isdir(cwd):
            os.chdir(cwd)
        import torch

        from tokenizer import load_tokenizer

        if threads:
            torch.set_num_threads(threads)
        self.tok = load_tokenizer(tokenizer_path, device=device, precision=precision).eval()

    def info(self, tokenizer_name: str):
        plan = self.tok.inference_plan()
        return tokens_info(self.tok, tokenizer_name), str(plan.device), str(plan.precision)

    def run(self, shard: str, out_path: str, batch_size: int, tokenizer_name: str) -> dict:
        out_path = Path(out_path)
        hook = _crash_hook(Path(shard).stem, self.crash)
        if hook is not None:
            hook(0)
        if out_path.is_file():  # a retried call whose first attempt finished
            from .shards import iter_token_shard

            n = [codes.shape[0] for _, codes, _ in iter_token_shard(out_path)]
            return {"sequences": len(n), "images": int(sum(n))}
        return tokenize_shard(self.tok, Path(shard), out_path, batch_size, tokenizer_name)


def _ray_tokenize(ray, pairs, tokenizer_name: str, out: Path, batch_size, device, precision, actors, max_retries,
                  progress, log) -> dict:
    from ray.exceptions import RayActorError
    from tqdm import tqdm

    out.mkdir(parents=True, exist_ok=True)
    todo = [(s.resolve(), o) for s, o in pairs if not o.is_file()]
    res = ray.cluster_resources()
    gpus, cpus = int(res.get("GPU", 0)), max(1, int(res.get("CPU", 1)))
    kind = (device or "auto").strip().lower().split(":")[0]
    if kind == "cuda" and not gpus:
        raise InputError(f"--device {device}: the Ray cluster has no GPUs; use --device cpu or auto")
    on_gpu = gpus > 0 and kind in ("auto", "cuda")
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    n = min(actors or (gpus if on_gpu else max(1, nodes)), gpus if on_gpu else cpus, max(1, len(todo)))
    if on_gpu:  # each actor sees only its own GPU, as cuda:0
        opts, dev, threads = {"num_gpus": 1}, "cuda:0", 0
    else:
        threads = max(1, cpus // n)
        opts, dev = {"num_cpus": threads}, device
    actor_cls = ray.remote(TokenizerWorker).options(max_restarts=max_retries, max_task_retries=max_retries, **opts)
    pool = [actor_cls.remote(tokenizer_name, dev, precision, os.getcwd(), threads, _test_crash()) for _ in range(n)]
    try:
        info, pdev, pprec = ray.get(pool[0].info.remote(tokenizer_name))
    except RayActorError as e:
        if not e.actor_init_failed:
            raise
        lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
        raise InputError(f"the tokenizer {tokenizer_name} did not load in a Ray actor: {lines[-1]}") from None
    write_tokens_info(out, info)
    log(f"ray: {len(pairs)} of {len(pairs)} shards, {len(pairs) - len(todo)} already done, tokenizer "
        f"K={info['codebook_size']} on {n} actor(s) ({'1 GPU' if on_gpu else f'{threads} CPU(s)'} each, {pdev} in "
        f"{pprec})")
    for _, o in todo:
        remove_stale_temps(o.parent, o.stem)
    queue, inflight, failed = list(todo), {}, []
    seqs = imgs = bad = 0

    def submit(actor):
        if queue:
            s, o = queue.pop(0)
            inflight[actor.run.remote(str(s), str(o), batch_size, tokenizer_name)] = (actor, o)

    t0 = time.perf_counter()
    for a in pool:
        submit(a)
    bar = tqdm(total=len(todo), unit="shard", disable=not progress, dynamic_ncols=True)
    try:
        while inflight:
            ready, _ = ray.wait(list(inflight), num_returns=1)
            actor, o = inflight.pop(ready[0])
            try:
                st = ray.get(ready[0])
            except RayActorError as e:  # its restarts are spent: the others take the queue
                failed.append(f"{o.name} ({_error(e)})")
                if not inflight:
                    failed += [f"{q.name} (no tokenizer actor left)" for _, q in queue]
                    queue.clear()
                continue
            except Exception as e:
                failed.append(f"{o.name} ({_error(e)})")
            else:
                seqs += st["sequences"]
                imgs += st["images"]
                bad += st.get("sequences_skipped", 0)
                bar.update(1)
                bar.set_postfix(seq=seqs, img=imgs)
            submit(actor)
    finally:
        bar.close()
        for a in pool:
            ray.kill(a)
        for _, o in todo:
            remove_stale_temps(o.parent, o.stem)
    summary = tokenize_summary(len(todo) - len(failed), len(pairs) - len(todo), seqs, imgs, time.perf_counter() - t0,
                               bad)
    if failed:
        raise RuntimeError(f"{len(failed)} shard(s) failed: {'; '.join(failed[:5])}; the {summary['shards_done']} "
                           "finished are kept, rerun to tokenize the rest")
    return summary
