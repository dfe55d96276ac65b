"""Data builders as a process: ranks and workers, resume after a kill, bad input, stage 2 and the tools."""

import base64
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from data_builders.build import build
from data_builders.config import DataConfig, SourceConfig
from data_builders.sequence import sample_images, sample_meta
from data_builders.shards import iter_token_shard
from lvm_base.tar import iter_tar_samples, list_shards
from data_builders.stats import collect_stats
from test_data_builders import ROOT, make_pairs, metas, run_build, solid, write_video


# ---------------------------------------------------------------- resume, workers, ranks

def _bytes(out):
    return {p.name: p.read_bytes() for p in sorted(Path(out).glob("*.tar"))}


def _builtin_cfg(out, count=24):
    return DataConfig(out=str(out), image_size=24, shard_size=3, seed=3, sources=[
        SourceConfig(type="builtin", count=count, views=6, n_frames=6, pairs_per_sequence=3)])


def test_ranks_and_workers_give_identical_shards(tmp_path):
    ref = _builtin_cfg(tmp_path / "ref", count=12)
    build(ref, progress=False, log=lambda *a: None)
    split = _builtin_cfg(tmp_path / "split", count=12)
    r0 = build(split, rank=0, world=2, progress=False, log=lambda *a: None)
    r1 = build(split, rank=1, world=2, progress=False, log=lambda *a: None)
    assert r0["shards_built"] == r1["shards_built"] == 2
    assert _bytes(ref.out) == _bytes(split.out)
    par = _builtin_cfg(tmp_path / "par", count=12)
    build(par, workers=2, progress=False, log=lambda *a: None)
    assert _bytes(ref.out) == _bytes(par.out)


def test_killed_build_resumes_byte_identical(tmp_path):
    cmd = [sys.executable, "-m", "lvm", "data", "build", str(ROOT / "configs/data/demo.yaml"),
           "image_size=24", "shard_size=2", "limit=40", "seed=11"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    full = tmp_path / "full"
    subprocess.run(cmd + [f"out={full}", "--no-progress"], check=True, env=env, cwd=tmp_path, capture_output=True)
    part = tmp_path / "part"
    proc = subprocess.Popen(cmd + [f"out={part}", "--no-progress"], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and len(list(part.glob("*.stats.json"))) < 3:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_at_kill = len(list(part.glob("*.stats.json")))
    assert 3 <= done_at_kill < 20, "the build must be killed mid-way"
    rerun = subprocess.run(cmd + [f"out={part}", "--no-progress"], check=True, env=env, cwd=tmp_path, capture_output=True, text=True)
    assert f"{done_at_kill} already done" in rerun.stdout
    assert not list(part.glob(".*tmp*"))  # the killed shard's temp file was cleaned up
    assert len(_bytes(full)) == 20 and _bytes(full) == _bytes(part)


# ---------------------------------------------------------------- bad input

def test_bad_inputs_are_skipped_and_counted(tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    for i in range(3):
        solid(i * 50).save(d / f"good{i}.png")
    good = (d / "good0.png").read_bytes()
    (d / "truncated.png").write_bytes(good[: len(good) // 2])
    (d / "garbage.jpg").write_bytes(b"\x00not an image" * 20)
    (d / "empty.png").write_bytes(b"")
    Image.fromarray(np.full((20, 20), 40000, np.uint16)).save(d / "odd16bit.png")  # odd modes are converted
    Image.new("CMYK", (20, 20), (0, 50, 100, 0)).save(d / "cmyk.jpg")
    _, samples, cfg = run_build(tmp_path, [SourceConfig(type="images", path=str(d))])
    assert len(samples) == 5
    st = collect_stats(cfg.out)
    assert st["failures"] == {"image_corrupt": 2, "image_truncated": 1}
    assert {Path(f["item"]).name for f in st["failed_items"]} == {"truncated.png", "garbage.jpg", "empty.png"}

    v = tmp_path / "badvids"
    v.mkdir()
    write_video(v / "ok.mp4", 160)
    (v / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(3000))
    import av

    with av.open(str(v / "zero.mp4"), "w") as c:  # a container without a single frame
        s = c.add_stream("mpeg4", rate=30)
        s.width = s.height = 32
        c.start_encoding()
    write_video(v / "tiny.mp4", 10)
    _, vs, cfg2 = run_build(tmp_path, [SourceConfig(type="videos", path=str(v), strides=[10])], name="o2")
    assert [Path(m["paths"][0]).name for m in metas(vs)] == ["ok.mp4"]
    assert collect_stats(cfg2.out)["failures"] == {"video_corrupt": 1, "video_too_short": 1, "video_zero_frames": 1}

    p = tmp_path / "p"
    make_pairs(p, n=4, tasks=("depth",))
    (p / "depth" / "x2.png").unlink()
    _, ps, cfg3 = run_build(tmp_path, [SourceConfig(type="pairs", path=str(p), tasks=["depth"])], name="o3")
    assert sorted(sample_meta(ps[0])["stems"]) == ["x0", "x1", "x3"]
    assert collect_stats(cfg3.out)["failures"] == {"pair_missing_side": 1}


def test_empty_or_missing_folder_is_one_line_error(tmp_path):
    (tmp_path / "empty").mkdir()
    for path in (tmp_path / "empty", tmp_path / "nope"):
        cfgfile = tmp_path / "c.yaml"
        cfgfile.write_text(f"out: {tmp_path / 'o'}\nsources:\n  - type: images\n    path: {path}\n")
        r = subprocess.run([sys.executable, "-m", "lvm", "data", "build", str(cfgfile), "--no-progress"],
                           capture_output=True, text=True, cwd=ROOT)
        assert r.returncode == 2
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and str(path) in lines[0], r.stderr


# ---------------------------------------------------------------- stage 2 and tools

def test_tokenize_export_stats_preview(tmp_path):
    import torch

    from tokenizer import VQGAN, VQGANConfig
    from lvm.cli import main

    torch.manual_seed(0)
    tok = VQGAN(VQGANConfig(resolution=16, hidden_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                            attn_resolutions=(), z_channels=8, embed_dim=8, codebook_size=32))
    tok.save_pretrained(tmp_path / "tok")
    cfg = DataConfig(out=str(tmp_path / "img"), image_size=16, shard_size=3, sources=[
        SourceConfig(type="builtin", count=6, views=4, n_frames=4, pairs_per_sequence=2)])
    build(cfg, progress=False, log=lambda *a: None)
    assert main(["data", "tokenize", cfg.out, "--tokenizer", str(tmp_path / "tok"), "--out",
                 str(tmp_path / "tok_out"), "--no-progress", "--batch-size", "5"]) == 0
    img_samples = {s["__key__"]: s for sh in list_shards(cfg.out) for s in iter_tar_samples(sh)}
    toks = [t for sh in list_shards(tmp_path / "tok_out") for t in iter_token_shard(sh)]
    assert len(toks) == 6
    for key, codes, meta in toks:
        ims = sample_images(img_samples[key])
        assert codes.shape == (len(ims), tok.codes_per_image) and 0 <= codes.min() and codes.max() < 32
        assert meta["kind"] == sample_meta(img_samples[key])["kind"]
        # batching across sequences gives the codes of encoding this sequence alone
        assert np.array_equal(codes, tok.encode_images(ims).numpy())
    assert main(["data", "export-jsonl", str(tmp_path / "tok_out"), "--out", str(tmp_path / "t.jsonl"),
                 "--no-progress"]) == 0
    lines = (tmp_path / "t.jsonl").read_text().splitlines()
    first = np.frombuffer(base64.b64decode(json.loads(lines[0])["tokens"]), "<i4")
    assert len(lines) == 6 and np.array_equal(first, toks[0][1].reshape(-1))
    assert main(["data", "stats", cfg.out]) == 0
    assert main(["data", "preview", cfg.out, "--out", str(tmp_path / "p.png")]) == 0
    assert Image.open(tmp_path / "p.png").size[0] > 100
