"""The tokenizer side of the device/precision policy: loads, commands, the transposed-conv upsample, the
bench's exact fp32 agreement, and the training plan of `lvm tokenizer train`."""

import contextlib
import io
import json
import re

import numpy as np
import pytest
import torch

from tokenizer import VQGAN, VQGANConfig, load_tokenizer
from lvm_base import hardware
from lvm_base.hardware import Hardware

AVX2 = Hardware(cpu_name="test AVX2", cpu_capability="AVX2", cpu_flags=frozenset({"avx2"}))
BF16_CPU = Hardware(cpu_name="test AVX512-BF16", cpu_capability="AVX512",
                    cpu_flags=frozenset({"avx2", "avx512_f", "avx512_bf16"}))


def _tiny(**kw) -> VQGANConfig:
    base = dict(resolution=32, hidden_channels=32, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
                mid_attention=False, z_channels=8, embed_dim=8, codebook_size=64, norm_groups=1)
    return VQGANConfig(**{**base, **kw})


def _saved(tmp_path, **kw):
    torch.manual_seed(0)
    tok = VQGAN(_tiny(**kw)).eval()
    with torch.no_grad():
        tok.quantize.embedding.weight.normal_(0, 0.5)
    tok.save_pretrained(tmp_path / "tok")
    return tok, tmp_path / "tok"


def _images(n, res, seed=0):
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, res), torch.linspace(-1, 1, res), indexing="ij")
    a = torch.rand(n, 3, 3, generator=g) * 2 - 1
    return (a[..., 0, None, None] * xx + a[..., 1, None, None] * yy + 0.3 * a[..., 2, None, None]).clamp(-1, 1)


def test_load_overrides_a_stored_bf16_and_auto_follows_the_policy(tmp_path, monkeypatch):
    tok, path = _saved(tmp_path, precision="bf16")
    assert json.loads((path / "config.json").read_text())["precision"] == "bf16"
    fp32 = load_tokenizer(path, precision="fp32")
    assert fp32.config.precision == "fp32" and fp32.inference_plan().precision == "fp32"
    x = _images(2, 32)
    tok.config.precision = "fp32"
    assert torch.equal(fp32.encode(x), tok.encode(x))
    # auto: what the policy says for the hardware, not what the checkpoint says
    monkeypatch.setattr(hardware, "detect", lambda: AVX2)
    auto = load_tokenizer(path)
    assert auto.config.precision == "auto" and auto.inference_plan().precision == "fp32"
    assert torch.equal(auto.encode(x), tok.encode(x))  # the fp32 path, exactly
    monkeypatch.setattr(hardware, "detect", lambda: BF16_CPU)
    assert load_tokenizer(path).inference_plan().precision == "bf16"
    assert load_tokenizer(path, device="cpu", precision="fp32").inference_plan().describe().startswith("cpu fp32")
    with pytest.raises(ValueError, match="precision"):
        VQGANConfig(precision="fp64")


def test_half_precision_paths_agree_with_fp32():
    torch.manual_seed(0)
    tok = VQGAN(_tiny()).eval()
    with torch.no_grad():
        tok.quantize.embedding.weight.normal_(0, 0.5)
    x = _images(3, 32)
    out = {}
    for p in ("fp32", "bf16", "fp16"):
        tok.config.precision = p
        codes = tok.encode(x)
        out[p] = (codes, tok.decode(codes))
    for p in ("bf16", "fp16"):
        assert (out[p][0] == out["fp32"][0]).float().mean() > 0.8
        assert out[p][1].dtype == torch.float32 and (out[p][1] - out["fp32"][1]).abs().mean() < 0.05


def test_transposed_upsample_equals_taming_upsample():
    from taming.modules.diffusionmodules.model import Upsample

    from tokenizer.networks import TransposedUpsample

    torch.manual_seed(0)
    ref = Upsample(16, with_conv=True)
    ours = Upsample(16, with_conv=True)
    ours.load_state_dict(ref.state_dict())
    ours.__class__ = TransposedUpsample
    x = torch.randn(2, 16, 7, 9, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    a, b = ref(x), ours(x2)
    assert a.shape == b.shape == (2, 16, 14, 18)
    assert (a - b).abs().max() < 1e-5
    g = torch.randn_like(a)
    a.backward(g)
    b.backward(g)
    assert (x.grad - x2.grad).abs().max() < 1e-4
    for p, q in zip(ref.parameters(), ours.parameters()):
        assert (p.grad - q.grad).abs().max() < 1e-3 * p.grad.abs().max()
    with torch.inference_mode():  # the cached kernel path, channels-last, equals too
        xc = x.detach().contiguous(memory_format=torch.channels_last)
        assert (ref(xc) - ours(xc)).abs().max() < 1e-5
    # and in a whole model: the decoder's upsamplers are these
    tok = VQGAN(_tiny())
    assert isinstance(tok.decoder.up[1].upsample, TransposedUpsample)


def test_l2_codes_ties_and_blocks():
    from tokenizer.quantize import L2Quantizer, argmin_rows

    torch.manual_seed(0)
    d = torch.randn(37, 1024)
    d[3, 700] = d[3, 5] = -100.0  # a tie: the first index wins, as with argmin
    assert torch.equal(argmin_rows(d), d.argmin(1))
    q = L2Quantizer(300, 8)
    q.embedding.weight.data.normal_()
    z = torch.randn(1000, 8)
    full = ((z[:, None, :] - q.embedding.weight[None]) ** 2).sum(-1).argmin(1)
    assert (q.codes(z) == full).float().mean() > 0.999
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the search stays fp32 inside autocast
        assert torch.equal(q.codes(z), q.codes(z.double()))


# ---- commands ----

MINE = [("tokenizer", "train"), ("tokenizer", "eval"), ("tokenizer", "recon"), ("tokenizer", "encode"),
        ("tokenizer", "decode"), ("data", "tokenize"), ("bench", "tokenizer")]


# --help of these commands lists --device/--precision: tests/test_cli.py covers every computing command.


@pytest.mark.parametrize("words", MINE, ids=" ".join)
def test_device_cuda_without_gpu_exits_2(words, tmp_path, monkeypatch, capsys):
    from lvm.cli import main

    monkeypatch.setattr(hardware, "detect", lambda: AVX2)  # no GPU, whatever this machine has
    monkeypatch.chdir(tmp_path)
    _, path = _saved(tmp_path)
    args = {"train": [f"data.path={tmp_path}", f"out_dir={tmp_path / 'run'}"],
            "eval": [str(path), "--images", str(tmp_path)], "recon": [str(path), str(tmp_path), "--out", "r.png"],
            "encode": [str(path), str(tmp_path), "--out", "c"], "decode": [str(path), str(tmp_path), "--out", "d"],
            "tokenize": [str(tmp_path), "--tokenizer", str(path), "--out", "t"], "tokenizer": []}[words[-1]]
    assert main([*words, *args, "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "no CUDA GPU" in err[-1]
    assert not (tmp_path / "t").exists() and not (tmp_path / "run").exists()


def test_tiny_runs_with_precision_fp32(tmp_path):
    from PIL import Image

    from lvm.cli import main
    from tokenizer.synthetic import scene

    tok, path = _saved(tmp_path, precision="bf16")
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(3):
        scene(0, i, 32).save(imgs / f"i{i}.png")
    assert main(["tokenizer", "eval", str(path), "--images", str(imgs), "--precision", "fp32", "--out",
                 str(tmp_path / "e.json")]) == 0
    r = json.loads((tmp_path / "e.json").read_text())
    assert r["precision"] == "fp32" and r["device"] == "cpu" and r["images"] == 3
    assert main(["tokenizer", "recon", str(path), str(imgs), "--out", str(tmp_path / "r.png"),
                 "--precision", "fp32", "--device", "cpu"]) == 0
    assert Image.open(tmp_path / "r.png").size[1] > 32
    assert main(["tokenizer", "encode", str(path), str(imgs), "--out", str(tmp_path / "c"),
                 "--precision", "fp32"]) == 0
    codes = np.stack([np.load(tmp_path / "c" / f"i{i}.npy") for i in range(3)])
    tok.config.precision = "fp32"
    want = tok.encode_images([Image.open(imgs / f"i{i}.png") for i in range(3)]).numpy()
    assert np.array_equal(codes, want)
    assert main(["tokenizer", "decode", str(path), str(tmp_path / "c"), "--out", str(tmp_path / "d"),
                 "--precision", "fp32"]) == 0
    assert len(list((tmp_path / "d").glob("*.png"))) == 3


def test_data_tokenize_precision_fp32(tmp_path):
    from data_builders.build import build
    from data_builders.config import DataConfig, SourceConfig
    from data_builders.shards import iter_token_shard
    from lvm_base.tar import list_shards
    from lvm.cli import main

    torch.manual_seed(0)
    VQGAN(_tiny(resolution=16)).save_pretrained(tmp_path / "tok")
    cfg = DataConfig(out=str(tmp_path / "img"), image_size=16, shard_size=4, sources=[
        SourceConfig(type="builtin", count=2, views=2, n_frames=2, pairs_per_sequence=1)])
    build(cfg, progress=False, log=lambda *a: None)
    assert main(["data", "tokenize", cfg.out, "--tokenizer", str(tmp_path / "tok"), "--out", str(tmp_path / "t"),
                 "--no-progress", "--precision", "fp32", "--device", "cpu"]) == 0
    assert len([t for sh in list_shards(tmp_path / "t") for t in iter_token_shard(sh)]) == 2


def test_tokenizer_train_records_the_resolved_plan(tmp_path, monkeypatch):
    import yaml

    from lvm.cli import main
    from lvm_base.config import load_config
    from tokenizer.synthetic import scene
    from tokenizer.train import training_plan
    from tokenizer.train_config import TokenizerTrainConfig

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(4):
        scene(0, i, 32).save(imgs / f"i{i}.png")
    tiny = ["model.resolution=32", "model.channel_mult=[1,2]", "model.hidden_channels=32", "model.codebook_size=64",
            "model.z_channels=8", "model.embed_dim=8", "model.color_skip=false", "batch_size=4", "max_steps=1",
            "log_every=1", "eval_every=0", "loss.disc_start=100", f"data.path={imgs}", f"out_dir={tmp_path / 'run'}"]
    assert main(["tokenizer", "train", *tiny, "precision=bf16", "--precision", "fp32", "--no-progress"]) == 0
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["precision"] == "fp32" and saved["device"] == "cpu"
    assert load_tokenizer(tmp_path / "run", precision="fp32").codebook_size == 64
    monkeypatch.setattr(hardware, "detect", lambda: AVX2)
    cfg = load_config(TokenizerTrainConfig, None, ["precision=bf16"])
    with contextlib.redirect_stderr(io.StringIO()):  # bf16 asked for where the CPU emulates it: a warning
        assert training_plan(cfg).precision == "bf16"
    assert training_plan(load_config(TokenizerTrainConfig, None, [])).precision == "fp32"  # auto on AVX2
    monkeypatch.setattr(hardware, "detect", lambda: BF16_CPU)
    assert training_plan(load_config(TokenizerTrainConfig, None, [])).precision == "bf16"


def test_bench_fp32_agrees_with_the_reference_exactly(capsys):
    from lvm.cli import main

    tiny = ["model.resolution=32", "model.channel_mult=[1,2,2]", "model.hidden_channels=32", "model.z_channels=8",
            "model.embed_dim=8", "model.codebook_size=256", "model.quantizer=l2", "model.color_skip=false"]
    # norm_groups=1 from the config: the reference must use the same GroupNorm groups to be the same network
    assert main(["bench", "tokenizer", "--config", "configs/tokenizer/small-128-f8.yaml", *tiny, "--batch-size", "2",
                 "--repeats", "1", "--precision", "fp32,auto", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "CPU:" in out and "auto (-> " in out
    row = next(line for line in out.splitlines() if line.strip().startswith("ours fp32"))
    agree, psnr = re.search(r"([\d.]+)%\s+([\d.]+) dB", row).groups()
    assert float(agree) > 99.0 and float(psnr) > 60.0, row
