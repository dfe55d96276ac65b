"""Tokenizer training: SIGKILL + --resume, data inputs, metrics, LPIPS from local files, CLI commands."""

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tokenizer import InputError, load_tokenizer
from tokenizer.synthetic import scene

TINY = ["model.resolution=32", "model.channel_mult=[1,2]", "model.hidden_channels=32", "model.codebook_size=64",
        "model.z_channels=8", "model.embed_dim=8", "model.quantizer=normed", "model.code_dim=4",
        "batch_size=4", "warmup_steps=0", "lr=1e-3", "min_lr=1e-3",  # constant lr: schedule independent of max_steps
        "log_every=1", "eval_every=0", "loss.disc_start=3", "dead_code_max_idle=2"]


def _make_images(root: Path, n: int, size=32, seed=0, bad=0):
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        scene(seed, i, size).save(root / f"img_{i:03d}.png")
    for i in range(bad):
        (root / f"broken_{i}.png").write_bytes(b"not an image")
    return root


def _cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "lvm", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, **kw)


def _losses(run: Path) -> dict:
    out = {}
    for line in (run / "train_log.jsonl").read_text().splitlines():
        r = json.loads(line)
        out[r["step"]] = r["loss"]  # a resumed run re-logs steps after its checkpoint: keep the last
    return out


def test_sigkill_then_resume_continues(tmp_path):
    data = _make_images(tmp_path / "imgs", 23, bad=1)  # 24 files = 6 full batches: the bad one is always met
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    # 1. uninterrupted reference run: 8 steps
    p = _cli("tokenizer", "train", *TINY, f"data.path={data}", f"out_dir={ref}", "max_steps=8", "save_every=4")
    out = p.communicate(timeout=300)[0].decode()
    assert p.returncode == 0, out
    assert "WITHOUT the LPIPS" in out and "skipped" in out
    # 2. a long run, SIGKILLed once its step-4 checkpoint exists
    p = _cli("tokenizer", "train", *TINY, f"data.path={data}", f"out_dir={killed}", "max_steps=100000",
             "save_every=4")
    latest = killed / "ckpt" / "latest"
    t0 = time.time()
    while not latest.exists():
        assert p.poll() is None, p.stdout.read().decode()
        assert time.time() - t0 < 240
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    step_at_kill = int(latest.read_text().strip().split("-")[1])
    assert step_at_kill >= 4
    # 3. resume to step 8
    p = _cli("tokenizer", "train", *TINY, f"data.path={data}", f"out_dir={killed}", "max_steps=8", "save_every=4",
             "--resume")
    out = p.communicate(timeout=300)[0].decode()
    assert p.returncode == 0, out
    assert f"resumed from" in out and f"at step {step_at_kill}" in out
    assert (killed / "ckpt" / "latest").read_text().strip() == "step-0000008"
    ref_l, res_l = _losses(ref), _losses(killed)
    assert max(res_l) == max(ref_l) == 8
    # the resumed steps follow the uninterrupted run's losses (same weights, optimizer, data order, RNG)
    for s in range(step_at_kill + 1, 9):
        assert res_l[s] == pytest.approx(ref_l[s], rel=2e-3, abs=1e-4), (s, res_l[s], ref_l[s])
    a, b = load_tokenizer(ref), load_tokenizer(killed)
    for k, v in a.state_dict().items():
        assert torch.allclose(v, b.state_dict()[k], atol=1e-3), k
    saved = (killed / "config.yaml").read_text()
    assert "perceptual_used: false" in saved


def test_datasets_folder_list_shards(tmp_path):
    from torch.utils.data import DataLoader

    from tokenizer.data import build_dataset, collate

    imgs = _make_images(tmp_path / "a" / "b", 5, bad=1)
    ds = build_dataset(tmp_path / "a", 32, (-1, 1))
    batches = list(DataLoader(ds, batch_size=3, collate_fn=collate))
    assert sum(x.shape[0] for x, _ in batches) == 5 and sum(s for _, s in batches) == 1
    lst = tmp_path / "list.txt"
    lst.write_text("a/b/img_000.png\n# comment\na/b/img_001.png\n")
    assert len(build_dataset(lst, 32, (0, 1))) == 2
    with tarfile.open(tmp_path / "s-000.tar", "w") as tf:
        for i, p in enumerate(sorted(imgs.glob("*.png"))):
            tf.add(p, arcname=f"seq{i}.{i % 2}.png")
        tf.add(lst, arcname="seq0.json")
    sh = build_dataset(str(tmp_path / "s-{000..000}.tar"), 32, (-1, 1), loop=False)
    got = list(DataLoader(sh, batch_size=2, collate_fn=collate))
    assert sum(x.shape[0] for x, _ in got if x is not None) == 5 and sum(s for _, s in got) == 1
    with pytest.raises(InputError):
        build_dataset(tmp_path / "nope", 32, (0, 1))


def test_metrics():
    from tokenizer.evaluate import TokenizerMetrics, psnr_per_image, ssim_per_image

    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(ssim_per_image(x, x), torch.ones(2, dtype=torch.float64))
    y = (x + 0.1).clamp(0, 1)
    assert float(psnr_per_image(x, y)[0]) == pytest.approx(-10 * np.log10(float(((x - y) ** 2)[0].mean())),
                                                           rel=1e-6)
    m = TokenizerMetrics(4)
    m.update(x, x, torch.tensor([[0, 0, 1, 1]]))
    m.update(x, x, torch.tensor([[0, 0, 1, 1]]))
    r = m.result()
    assert r["codebook_usage"] == 50.0 and r["code_perplexity"] == pytest.approx(2.0)


def test_lpips_from_local_files(tmp_path):
    from torchvision.models import vgg16

    from tokenizer.lpips import LPIPS

    torch.manual_seed(0)
    torch.save(vgg16(weights=None).state_dict(), tmp_path / "vgg16.pth")
    torch.save({f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate((64, 128, 256, 512, 512))},
               tmp_path / "lin.pth")
    lp = LPIPS.from_files(tmp_path / "vgg16.pth", tmp_path / "lin.pth")
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    d = lp(x, x.flip(-1))
    assert d.shape == (2,) and (d > 0).all() and torch.allclose(lp(x, x), torch.zeros(2))
    with pytest.raises(InputError):
        LPIPS.from_files(tmp_path / "lin.pth", tmp_path / "lin.pth")


def test_cli_eval_recon_encode_decode(tmp_path, capsys):
    from tests.hostile.cli_util import cli
    from tokenizer import VQGAN, VQGANConfig

    torch.manual_seed(0)
    tok = VQGAN(VQGANConfig(resolution=32, hidden_channels=32, channel_mult=(1, 2), attn_resolutions=(),
                            mid_attention=False, z_channels=8, embed_dim=8, codebook_size=64))
    tok.save_pretrained(tmp_path / "tok")
    imgs = _make_images(tmp_path / "imgs", 4, bad=1)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def lvm(*a):  # in this process (the executable's own exit is checked by the last run, below)
        rc, out, err = cli(capsys, *a)
        assert rc == 0, err
        return out

    out = lvm("tokenizer", "eval", str(tmp_path / "tok"), "--images", str(imgs), "--out", str(tmp_path / "e.json"))
    r = json.loads((tmp_path / "e.json").read_text())
    assert r["images"] == 4 and r["skipped"] == 1 and 0 < r["codebook_usage"] <= 100 and "PSNR" in out
    lvm("tokenizer", "recon", str(tmp_path / "tok"), str(imgs / "img_000.png"), str(imgs / "img_001.png"),
        "--out", str(tmp_path / "grid.png"))
    from PIL import Image
    assert Image.open(tmp_path / "grid.png").size[1] > 64
    lvm("tokenizer", "encode", str(tmp_path / "tok"), str(imgs), "--out", str(tmp_path / "codes"))
    files = sorted((tmp_path / "codes").glob("*.npy"))
    assert len(files) == 4
    c = np.load(files[0], allow_pickle=False)
    assert c.shape == (256,) and c.dtype == np.int64
    np.save(tmp_path / "codes" / "zz_bad.npy", np.zeros((3, 7), np.int64))
    out = lvm("tokenizer", "decode", str(tmp_path / "tok"), str(tmp_path / "codes"), "--out", str(tmp_path / "dec"))
    assert len(list((tmp_path / "dec").glob("*.png"))) == 4 and "1 files skipped" in out
    r = subprocess.run([sys.executable, "-m", "lvm", "tokenizer", "eval", str(tmp_path / "nope"), "--images",
                        str(imgs)], capture_output=True, text=True, env=env)
    assert r.returncode == 2 and r.stderr.startswith("error:") and len(r.stderr.strip().splitlines()) == 1


def test_random_crops_and_crop_config(tmp_path):
    from lvm_base.config import load_config
    from tokenizer.train import Trainer, random_crops
    from tokenizer.train_config import TokenizerTrainConfig

    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    torch.manual_seed(0)
    c = random_crops(x, 4)
    assert c.shape == (2, 3, 4, 4)
    for img, crop in zip(x, c):  # each crop is a contiguous window of its own image
        t, l = divmod(int(crop[0, 0, 0]) - int(img[0, 0, 0]), 8)
        assert torch.equal(crop, img[:, t:t + 4, l:l + 4])
    assert random_crops(x, None) is x and random_crops(x, 8) is x
    # a crop that the downsampling factor does not divide is refused before any work
    cfg = load_config(TokenizerTrainConfig, None, TINY + [f"data.path={tmp_path}", "data.crop=3",
                                                          f"out_dir={tmp_path / 'run'}"])
    with pytest.raises(InputError, match="data.crop=3"):
        Trainer(cfg, log=lambda *a: None).train()
