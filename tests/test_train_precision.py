"""lvm train / lvm bench train / lvm demo under the device and precision policy (lvm_base.hardware)."""

import json
import math
import re

import numpy as np
import pytest

import lvm_base.hardware as hardware
from data_builders.shards import write_token_shard
from lvm.cli import main
from lvm_base.config import load_config
from lvm.train.config import TrainConfig
from lvm.train.loop import train

K = 64

pytestmark = pytest.mark.usefixtures("one_thread")

AVX2 = hardware.Hardware(cpu_name="test AVX2 CPU", cpu_capability="AVX2", cpu_flags=frozenset({"avx2"}))


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokens")
    rng = np.random.default_rng(0)
    items = [(f"s{i}", ((int(rng.integers(K)) + np.arange(256 * n)) % K).reshape(n, 256), {"kind": "test"})
             for i, n in enumerate(rng.integers(1, 3, 20))]
    write_token_shard(root / "tokens-000000.tar", items)
    return root


def _cfg(shards, out, *extra):
    return load_config(TrainConfig, "configs/train/tiny.yaml", [
        f"out_dir={out}", f"data.shards={shards}", f"model.codebook_size={K}", "model.max_position_embeddings=512",
        "model.hidden_size=48", "model.intermediate_size=64", "model.num_hidden_layers=1",
        "model.num_attention_heads=2", "model.grid_heads=0", "model.grid_copy=0", "tokens_per_step=0", "max_steps=2", "save_every=2",
        "eval_every=100", "peak_tflops=1.0", "warmup_steps=1", *extra])


def test_auto_precision_is_recorded_resolved(shards, tmp_path):
    cfg = _cfg(shards, tmp_path / "run")
    assert cfg.precision == "auto" and cfg.device == "auto"  # what the shipped config says
    s = train(cfg, progress=False)
    assert s["step"] == 2
    saved = load_config(TrainConfig, tmp_path / "run" / "config.yaml")
    want = hardware.resolve("auto", "auto", "training")
    assert saved.precision == want.precision and saved.precision in ("fp32", "bf16", "fp16")
    assert saved.device == want.device


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_explicit_half_precision_on_a_cpu_without_it_warns_once_and_trains(shards, tmp_path, monkeypatch,
                                                                          capsys, precision):
    monkeypatch.setattr(hardware, "detect", lambda: AVX2)
    monkeypatch.setattr(hardware, "_warned", set())
    assert hardware.resolve("cpu", "auto", "training").precision == "fp32"  # auto avoids the emulated path
    s = train(_cfg(shards, tmp_path / "run", f"precision={precision}"), progress=False)
    err = capsys.readouterr().err
    assert err.count(f"warning: precision={precision}") == 1, err
    assert "precision=auto avoids it" in err
    assert s["step"] == 2 and all(math.isfinite(v) for v in s["losses"].values())
    assert load_config(TrainConfig, tmp_path / "run" / "config.yaml").precision == precision


@pytest.mark.parametrize("argv", [["train"], ["bench", "train"], ["demo"]])
def test_help_mentions_device_and_precision(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv + ["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "--device" in text and "--precision" in text


@pytest.mark.parametrize("argv", [["train", "max_steps=1"], ["demo"]])
def test_device_cuda_without_a_gpu_is_a_one_line_error(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(hardware, "detect", lambda: AVX2)
    out = [f"out_dir={tmp_path / 'run'}"] if argv[0] == "train" else [f"out={tmp_path / 'demo'}"]
    rc = main(argv + out + ["--device", "cuda"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error:") and "cuda" in err and "\n" not in err
    assert not (tmp_path / "run").exists()  # nothing written before the device was checked


def test_train_flags_override_the_config(capsys):
    assert main(["train", "configs/train/tiny.yaml", "--precision", "fp32", "--device", "cpu", "--print-config"]) == 0
    text = capsys.readouterr().out
    assert "precision: fp32" in text and "device: cpu" in text
    assert main(["train", "configs/train/tiny.yaml", "precision=bf16", "--print-config"]) == 0
    assert "precision: bf16" in capsys.readouterr().out  # --precision auto leaves the config's value


def test_demo_records_the_resolved_plan(capsys):
    assert main(["demo", "--precision", "fp32", "--print-config"]) == 0
    assert "precision: fp32" in capsys.readouterr().out


def test_bench_train_mfu_is_against_each_sides_own_peak(tmp_path, capsys):
    model = tmp_path / "m.yaml"
    model.write_text("hidden_size: 32\nintermediate_size: 64\nnum_hidden_layers: 1\nnum_attention_heads: 2\n"
                     "codebook_size: 8192\nmax_position_embeddings: 512\n")
    out = tmp_path / "bench.json"
    assert main(["bench", "train", "--model", str(model), "--seq-len", "512", "--steps", "1", "--warmup", "0",
                 "--precision", "fp32,bf16", "--threads", "1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "precision auto -> " in text and "torch capability" in text  # the plan and the CPU are printed
    mfus = re.findall(r"MFU ([\d.]+)% of (\w+) peak", text)
    assert {p for _, p in mfus} == {"fp32", "bf16"} and len(mfus) == 3, text  # reference, ours fp32, ours bf16
    assert all(0 < float(v) <= 100 for v, _ in mfus), mfus
    res = json.loads(out.read_text())
    assert set(res["peaks"]) == {"fp32", "bf16"} and set(res["results"][0]["ours"]) == {"fp32", "bf16"}
    assert all(0 < o["mfu"] <= 1 for o in res["results"][0]["ours"].values())
