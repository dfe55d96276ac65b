"""The data path on several processes and machines: ranks from the launcher's environment, the Ray engine
(also with a worker killed mid-shard), duplicated shard attempts, and Ray tokenizing. Every distributed
build must give the bytes of a 1-process build of the same config.

The Ray tests share one local Ray session (2 CPUs, no dashboard) and skip when Ray is not installed.
"""

import json
import logging
import multiprocessing as mp
import os
import subprocess
import sys
from pathlib import Path

import pytest

from data_builders.build import build, plan_shards, shard_paths
from data_builders.config import DataConfig, SourceConfig, dist_env
from data_builders.engines import CRASH_MARKER_ENV, CRASH_SHARD_ENV, build_shard_attempt, run_build, run_tokenize
from lvm_base.config import save_config
from test_data_builders import ROOT

QUIET = dict(progress=False, log=lambda *a: None)
DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS", CRASH_SHARD_ENV, CRASH_MARKER_ENV)


def _cfg(out):  # 12 built-in sequences in 4 shards of 3
    return DataConfig(out=str(out), image_size=24, shard_size=3, seed=3, sources=[
        SourceConfig(type="builtin", count=12, views=6, n_frames=6, pairs_per_sequence=3)])


def _bytes(out):
    """Every tar under `out` (a leftover temp file `.x.tmp.tar` included, so it would show) -> its bytes."""
    return {p.name: p.read_bytes() for p in sorted(Path(out).glob("*.tar"))}


def _config_file(tmp_path):
    return save_config(_cfg("unset"), tmp_path, "data.yaml")


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    """The 1-process build: (its tar bytes, its summary)."""
    cfg = _cfg(tmp_path_factory.mktemp("ref") / "images")
    res = build(cfg, **QUIET)
    assert res["shards_built"] == 4
    return _bytes(cfg.out), res


@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'lvm[ray]')")
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield ray
    ray.shutdown()


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


# ---------------------------------------------------------------- local engine: ranks from the environment

def test_dist_env_reads_torchrun_then_slurm(monkeypatch):
    for k in DIST_VARS:
        monkeypatch.delenv(k, raising=False)
    assert dist_env() == (0, 1)
    monkeypatch.setenv("SLURM_PROCID", "3")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert dist_env() == (3, 4)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert dist_env() == (1, 2)


def test_two_rank_processes_match_one_process(ref, tmp_path):
    cfgfile, out = _config_file(tmp_path), tmp_path / "split"
    cmd = [sys.executable, "-m", "lvm", "data", "build", str(cfgfile), f"out={out}", "--no-progress"]
    procs = [subprocess.Popen(cmd, env=_env(RANK=str(r), WORLD_SIZE="2"), cwd=tmp_path, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for r in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (o, e) in zip(procs, outs):
        assert p.returncode == 0, e
    for r, (o, _) in enumerate(outs):
        assert f"rank {r}/2: 2 of 4 shards" in o
        assert json.loads(o.strip().splitlines()[-1])["shards_built"] == 2
    assert _bytes(out) == ref[0]


def test_duplicate_attempts_of_one_shard_commit_one_identical_shard(ref, tmp_path):
    """Two attempts at one shard at the same time (what a retry racing a slow first attempt does), then one
    more after it is done: one complete shard with the 1-process bytes, no temp file left."""
    cfg = _cfg(tmp_path / "dup")
    task = plan_shards(cfg)[1]
    with mp.get_context("spawn").Pool(2) as pool:
        results = pool.map(build_shard_attempt, [task, task])
    assert [r["sequences"] for r in results] == [3, 3]
    tar, stats = shard_paths(Path(cfg.out), task.shard)
    assert _bytes(cfg.out) == {tar.name: ref[0][tar.name]} and stats.is_file()
    before = tar.stat().st_mtime_ns
    assert build_shard_attempt(task)["sequences"] == 3  # done: returns the recorded stats, builds nothing
    assert tar.stat().st_mtime_ns == before
    assert sorted(p.name for p in Path(cfg.out).iterdir()) == sorted([tar.name, stats.name])


def test_ray_is_imported_only_for_the_ray_engine():
    code = ("import sys, data_builders.engines, lvm.commands.data_build, lvm.commands.data_tokenize; "
            "assert 'ray' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, env=_env(), cwd=ROOT)


def test_ray_engine_without_ray_is_one_line_error(tmp_path, monkeypatch, capsys):
    from lvm.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if not installed
    assert main(["data", "build", str(_config_file(tmp_path)), f"out={tmp_path / 'o'}", "--engine", "ray",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "pip install" in err[-1]
    assert main(["data", "build", str(_config_file(tmp_path)), "--engine", "ray", "--rank", "0"]) == 2


# ---------------------------------------------------------------- Ray engine

def test_ray_build_matches_one_process_and_resumes(ray_session, ref, tmp_path, capsys):
    from lvm.cli import main

    out = tmp_path / "ray"
    assert main(["data", "build", str(_config_file(tmp_path)), f"out={out}", "--engine", "ray", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "ray: 4 of 4 shards, 0 already done, 4 to build" in printed
    res = json.loads(printed.strip().splitlines()[-1])
    assert res["shards_built"] == 4 and res["retries"] == 0
    assert (res["sequences"], res["images"]) == (ref[1]["sequences"], ref[1]["images"])
    assert _bytes(out) == ref[0]
    again = run_build(_cfg(out), engine="ray", **QUIET)
    assert again["shards_built"] == 0 and again["shards_skipped"] == 4


def test_ray_build_retries_a_worker_killed_mid_shard(ray_session, ref, tmp_path, monkeypatch):
    out, marker = tmp_path / "crash", tmp_path / "crashed-once"
    monkeypatch.setenv(CRASH_SHARD_ENV, "builtin-000002")
    monkeypatch.setenv(CRASH_MARKER_ENV, str(marker))
    res = run_build(_cfg(out), engine="ray", **QUIET)
    assert marker.is_file()  # the first attempt at builtin-000002 ran, and its worker process died mid-shard
    assert res["shards_built"] == 4 and res["retries"] == 1
    assert _bytes(out) == ref[0]
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temp or attempt files left


def _tiny_tokenizer(path):
    import torch

    from tokenizer import VQGAN, VQGANConfig

    torch.manual_seed(0)
    tok = VQGAN(VQGANConfig(resolution=16, hidden_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                            attn_resolutions=(), z_channels=8, embed_dim=8, codebook_size=32))
    tok.save_pretrained(path)
    return path


def test_ray_tokenize_matches_local(ray_session, tmp_path, monkeypatch):
    """Two tokenizer actors, one of which dies as it takes shard builtin-000001 (first attempt only): Ray
    restarts it and retries the shard; the token shards are the local engine's bytes."""
    from data_builders.encode import tokenize

    marker = tmp_path / "actor-crashed-once"
    monkeypatch.setenv(CRASH_SHARD_ENV, "builtin-000001")
    monkeypatch.setenv(CRASH_MARKER_ENV, str(marker))
    tok = _tiny_tokenizer(tmp_path / "tok")
    images = DataConfig(out=str(tmp_path / "img"), image_size=16, shard_size=3, sources=[
        SourceConfig(type="builtin", count=6, views=4, n_frames=4, pairs_per_sequence=2)])
    build(images, **QUIET)
    local = tokenize(images.out, tok, tmp_path / "local", batch_size=5, **QUIET)
    ray_res = run_tokenize(images.out, tok, tmp_path / "ray", engine="ray", batch_size=5, actors=2, **QUIET)
    assert marker.is_file()  # an actor died on its first attempt at builtin-000001
    assert ray_res["shards_done"] == local["shards_done"] == 2
    assert (ray_res["sequences"], ray_res["images"]) == (local["sequences"], local["images"])

    def files(d):
        return {p.name: p.read_bytes() for p in sorted(Path(d).iterdir())}

    assert files(tmp_path / "ray") == files(tmp_path / "local")
    assert set(files(tmp_path / "ray")) == {"builtin-000000.tar", "builtin-000001.tar", "tokens_info.json"}
    again = run_tokenize(images.out, tok, tmp_path / "ray", engine="ray", batch_size=5, actors=2, **QUIET)
    assert again["shards_done"] == 0 and again["shards_skipped"] == 2
