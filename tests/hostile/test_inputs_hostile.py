"""Hostile but fair input files: checkpoints, configs, image lists, eval files and shards that are damaged,
of the wrong shape, or not what they claim to be.

Each case runs the real CLI (`lvm.cli.main`, the `lvm` executable's entry point, in process; one case as
a subprocess) and checks either a refusal (exit 2, one `error:` line naming the file and what is wrong, no
traceback) or, for the long jobs that read many items, that the bad item is skipped and counted. Inputs
stay byte for byte what they were. Poisoned checkpoint state files: test_resume_hostile.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cli_util import ROOT, assert_one_line_error, cli, snapshot
from tiny import save_tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

K = 64


class Poison:
    """Unpickling this object creates `marker` (builtins.open): a stand-in for any code a pickle could run.
    (Used by test_resume_hostile.py.)"""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny tokenizer (K = 64) and model that fit, four images, a good eval JSONL: shared, never modified."""
    from lvm.model import ModelConfig

    root = tmp_path_factory.mktemp("inputs")
    save_tiny_tokenizer(root / "tok", K)
    torch.manual_seed(0)
    ModelConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, codebook_size=K,
                max_position_embeddings=1024).build().save_pretrained(root / "lvm")
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / f"{i}.png")
    (root / "eval.jsonl").write_text(json.dumps({"input": ["0.png"], "target": ["1.png"]}) + "\n")
    return root


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def perplexity(capsys, files, model=None, tok=None, jsonl=None, out=None):
    args = ["eval", "perplexity", jsonl or files / "eval.jsonl", "--model", model or files / "lvm",
            "--tokenizer", tok or files / "tok", "--device", "cpu", "--precision", "fp32"]
    return cli(capsys, *args, *(["--out", out] if out else []))


# ---------------------------------------------------------------- model checkpoints (item 4, item 8)

def _drop_tensors(d: Path, drop) -> None:
    from safetensors.torch import load_file, save_file

    st = load_file(str(d / "model.safetensors"))
    save_file({k: v for k, v in st.items() if not drop(k)}, str(d / "model.safetensors"), metadata={"format": "pt"})


def test_model_missing_a_layer_and_lm_head_is_refused_naming_them(files, tmp_path, capsys):
    """The issue's case: a layer and lm_head gone; transformers alone fills them with random values, exit 0."""
    m = copy(files / "lvm", tmp_path / "m")
    _drop_tensors(m, lambda k: k.startswith("model.layers.1.") or k == "lm_head.weight")
    before = snapshot(m)
    rc, _, err = perplexity(capsys, files, model=m, out=tmp_path / "res.json")
    line = assert_one_line_error(rc, err, m / "model.safetensors", "missing keys", "lm_head.weight",
                                 "model.layers.1.")
    assert "unexpected keys: none" in line
    assert not (tmp_path / "res.json").exists() and snapshot(m) == before


def test_prompt_with_a_model_missing_tensors_is_refused(files, tmp_path, capsys):
    m = copy(files / "lvm", tmp_path / "m")
    _drop_tensors(m, lambda k: k == "model.norm.weight")
    (tmp_path / "p.yaml").write_text(f"images: [{files / '0.png'}]\nn: 1\n")
    rc, _, err = cli(capsys, "prompt", "--model", m, "--tokenizer", files / "tok", "--prompt", tmp_path / "p.yaml",
                     "--out", tmp_path / "out", "--device", "cpu", "--no-display")
    assert_one_line_error(rc, err, m / "model.safetensors", "model.norm.weight")
    assert not (tmp_path / "out").exists()


def test_model_with_an_unexpected_tensor_is_refused(files, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    m = copy(files / "lvm", tmp_path / "m")
    st = load_file(str(m / "model.safetensors"))
    st["model.layers.7.self_attn.q_proj.weight"] = torch.zeros(4, 4)
    save_file(st, str(m / "model.safetensors"), metadata={"format": "pt"})
    rc, _, err = perplexity(capsys, files, model=m)
    assert_one_line_error(rc, err, m / "model.safetensors", "unexpected keys: model.layers.7.self_attn.q_proj.weight")


def test_model_bin_checkpoint_missing_tensors_is_refused(files, tmp_path, capsys):
    """Without safetensors (pytorch_model.bin) transformers' own loading report is what is checked."""
    from safetensors.torch import load_file

    m = tmp_path / "m"
    m.mkdir()
    shutil.copy(files / "lvm" / "config.json", m)
    st = load_file(str(files / "lvm" / "model.safetensors"))
    del st["lm_head.weight"]
    torch.save(st, m / "pytorch_model.bin")
    rc, _, err = perplexity(capsys, files, model=m)
    assert_one_line_error(rc, err, m, "missing keys: lm_head.weight")


@pytest.mark.parametrize("damage", ["truncated", "random", "empty"])
def test_damaged_model_safetensors_is_one_line(files, tmp_path, capsys, damage):
    m = copy(files / "lvm", tmp_path / "m")
    w = m / "model.safetensors"
    data = w.read_bytes()
    w.write_bytes({"truncated": data[:len(data) // 2], "random": os.urandom(4096), "empty": b""}[damage])
    rc, _, err = perplexity(capsys, files, model=m)
    assert_one_line_error(rc, err, w, "not a readable safetensors file")


@pytest.mark.parametrize("key,value,words", [
    ("hidden_size", "abc", "hidden_size: must be an integer >= 1"),
    ("num_hidden_layers", -2, "num_hidden_layers: must be an integer >= 1"),
    ("vocab_size", 0, "vocab_size: must be an integer >= 1"),
    ("num_attention_heads", 3, "num_attention_heads"),
    ("rms_norm_eps", "nan", "rms_norm_eps"),
])
def test_bad_model_config_value_is_one_line(files, tmp_path, capsys, key, value, words):
    m = copy(files / "lvm", tmp_path / "m")
    cfg = json.loads((m / "config.json").read_text())
    cfg[key] = value
    (m / "config.json").write_text(json.dumps(cfg))
    rc, _, err = perplexity(capsys, files, model=m)
    assert_one_line_error(rc, err, m / "config.json", words)


@pytest.mark.parametrize("content,words", [(b"[1, 2]", "must be a JSON object, got a list"),
                                           (b'{"model_type": "llama", "x": "\xff"}', "not UTF-8"),
                                           (b'{"model_type": "llama",', "not valid JSON")])
def test_model_config_json_that_is_not_an_object_or_not_utf8_is_one_line(files, tmp_path, capsys, content, words):
    m = copy(files / "lvm", tmp_path / "m")
    (m / "config.json").write_bytes(content)
    rc, _, err = perplexity(capsys, files, model=m)
    assert_one_line_error(rc, err, m / "config.json", words)


def test_damaged_model_as_a_subprocess_has_no_traceback(files, tmp_path):
    """The `lvm` executable itself: exit 2, one line, no traceback (also no transformers load report)."""
    m = copy(files / "lvm", tmp_path / "m")
    _drop_tensors(m, lambda k: k == "lm_head.weight")
    r = subprocess.run([sys.executable, "-m", "lvm", "eval", "perplexity", str(files / "eval.jsonl"), "--model",
                        str(m), "--tokenizer", str(files / "tok"), "--device", "cpu"],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert_one_line_error(r.returncode, r.stderr, m / "model.safetensors", "lm_head.weight")


# ---------------------------------------------------------------- tokenizer checkpoints (item 8)

def _edit_tok_config(d: Path, **kw) -> None:
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, **kw}))


@pytest.mark.parametrize("case,words", [
    ("list", "must be a JSON object, got a list"),
    ("utf8", "not UTF-8"),
    ("codebook_-1", "codebook_size: must be an integer >= 1, got -1"),
    ("codebook_0", "codebook_size: must be an integer >= 1, got 0"),
    ("resolution_abc", "resolution: must be an integer >= 1, got 'abc'"),
    ("channel_mult", "channel_mult: must be a non-empty list"),
])
def test_bad_tokenizer_config_is_one_line(files, tmp_path, capsys, case, words):
    t = copy(files / "tok", tmp_path / "t")
    if case == "list":
        (t / "config.json").write_text("[1]")
    elif case == "utf8":
        (t / "config.json").write_bytes(b'{"format": "lvm-vqgan", "x": "\xff"}')
    elif case.startswith("codebook"):
        _edit_tok_config(t, codebook_size=int(case.split("_")[1]))
    elif case == "resolution_abc":
        _edit_tok_config(t, resolution="abc")
    else:
        _edit_tok_config(t, channel_mult=[])
    before = snapshot(files / "0.png", t)
    rc, _, err = cli(capsys, "tokenizer", "encode", t, files / "0.png", "--out", tmp_path / "codes", "--device", "cpu")
    assert_one_line_error(rc, err, t / "config.json", words)
    assert snapshot(files / "0.png", t) == before and not (tmp_path / "codes").exists()


@pytest.mark.parametrize("damage", ["truncated", "random", "missing_tensor"])
def test_damaged_tokenizer_safetensors_is_one_line(files, tmp_path, capsys, damage):
    t = copy(files / "tok", tmp_path / "t")
    w = t / "model.safetensors"
    if damage == "missing_tensor":
        from safetensors.torch import load_file, save_file

        st = load_file(str(w))
        del st["quantize.embedding.weight"]
        save_file(st, str(w))
        words = "missing keys: quantize.embedding.weight"
    else:
        data = w.read_bytes()
        w.write_bytes(data[:len(data) // 2] if damage == "truncated" else os.urandom(4096))
        words = "not a readable safetensors file"
    rc, _, err = perplexity(capsys, files, tok=t)
    assert_one_line_error(rc, err, w, words)


# ---------------------------------------------------------------- eval JSONL and image lists (items 8, 9)

def test_eval_jsonl_line_with_17_targets_is_skipped_naming_file_and_line(files, tmp_path, capsys):
    """The issue's case ended eval perplexity naming neither file nor line; it is one bad line, skipped."""
    jl = tmp_path / "eval.jsonl"
    lines = [{"input": [str(files / "0.png")], "target": [str(files / "1.png")]},
             {"input": [], "target": [str(files / "2.png")] * 17}]
    jl.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    rc, out, err = perplexity(capsys, files, jsonl=jl, out=tmp_path / "res.json")
    assert rc == 0 and "Traceback" not in err, err
    assert f"{jl}:2: skipped (17 \"target\" images do not fit the model's context of 4 images)" in err
    res = json.loads((tmp_path / "res.json").read_text())
    assert res["examples"] == 1 and res["skipped"] == 1 and "1 skipped" in out


def test_eval_jsonl_with_non_utf8_bytes_skips_that_line(files, tmp_path, capsys):
    jl = tmp_path / "eval.jsonl"
    good = json.dumps({"input": [str(files / "0.png")], "target": [str(files / "1.png")]}).encode()
    jl.write_bytes(good + b"\n" + b'{"input": ["\xff\xfe.png"], "target": ["1.png"]}\n' + good + b"\n")
    before = snapshot(jl)
    rc, _, err = perplexity(capsys, files, jsonl=jl, out=tmp_path / "res.json")
    assert rc == 0 and "Traceback" not in err, err
    assert f"{jl}:2: skipped (not UTF-8 text (byte 0xff" in err
    res = json.loads((tmp_path / "res.json").read_text())
    assert res["examples"] == 2 and res["skipped"] == 1 and snapshot(jl) == before


def test_image_list_with_non_utf8_bytes_is_one_line(files, tmp_path, capsys):
    lst = tmp_path / "list.txt"
    lst.write_bytes(f"{files / '0.png'}\n".encode() + b"caf\xe9.png\n")
    rc, _, err = cli(capsys, "tokenizer", "encode", files / "tok", lst, "--out", tmp_path / "codes", "--device", "cpu")
    assert_one_line_error(rc, err, lst, "line 2 of the image list is not UTF-8")
    # the same list as the `images` source of a data build
    cfg = tmp_path / "data.yaml"
    cfg.write_text(f"out: {tmp_path / 'built'}\nimage_size: 32\nsources:\n  - type: images\n    path: {lst}\n")
    rc, _, err = cli(capsys, "data", "build", cfg, "--no-progress")
    assert_one_line_error(rc, err, lst, "line 2 of the image list is not UTF-8")


# ---------------------------------------------------------------- image shards: skipped and counted (item 8)

@pytest.fixture
def bad_shard(tmp_path):
    """An image shard of four 2-frame sequences: seq 1 has a truncated PNG frame, seq 2 a JSON that is not
    JSON, seq 3 a JSON list; seq 0 is good."""
    from data_builders.sequence import Sequence
    from data_builders.shards import TarShardWriter

    rng = np.random.default_rng(1)
    d = tmp_path / "images"
    with TarShardWriter(d / "images-000000.tar") as w:
        for i in range(4):
            ims = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(2)]
            s = Sequence(ims, "video", "test").to_sample(f"seq_{i:04d}")
            if i == 1:
                s["1.png"] = s["1.png"][:60]
            elif i == 2:
                s["json"] = b"{not json"
            elif i == 3:
                s["json"] = b"[1, 2]"
            w.write(s)
    return d


def test_tokenize_skips_and_counts_corrupt_png_and_bad_json_members(files, bad_shard, tmp_path, capsys):
    from data_builders.shards import iter_token_shard

    before = snapshot(bad_shard)
    rc, out, err = cli(capsys, "data", "tokenize", bad_shard, "--tokenizer", files / "tok", "--out",
                       tmp_path / "tokens", "--device", "cpu", "--no-progress")
    assert rc == 0 and "Traceback" not in err, err
    res = json.loads(out.strip().splitlines()[-1])
    assert res["sequences"] == 1 and res["images"] == 2 and res["sequences_skipped"] == 3
    shard = bad_shard / "images-000000.tar"
    assert f"{shard}:seq_0001.1.png: image does not decode" in err and f"{shard}:seq_0002.json: not JSON" in err
    assert f"{shard}:seq_0003.json: not a JSON object" in err
    assert [k for k, _, _ in iter_token_shard(tmp_path / "tokens" / "images-000000.tar")] == ["seq_0000"]
    assert snapshot(bad_shard) == before


def test_preview_skips_and_counts_corrupt_png_and_bad_json_members(bad_shard, tmp_path, capsys):
    before = snapshot(bad_shard)
    rc, out, err = cli(capsys, "data", "preview", bad_shard, "--out", tmp_path / "p.png")
    assert rc == 0 and "Traceback" not in err, err
    assert "(1 rows, 3 samples skipped)" in out and (tmp_path / "p.png").is_file()
    assert "seq_0001.1.png: image does not decode" in err and snapshot(bad_shard) == before


def test_preview_of_a_shard_with_only_bad_samples_is_one_line(bad_shard, tmp_path, capsys):
    from data_builders.shards import TarShardWriter

    only_bad = tmp_path / "bad"
    with TarShardWriter(only_bad / "x.tar") as w:
        w.write({"__key__": "a", "0.png": b"\x89PNG garbage", "json": b"{}"})
    rc, _, err = cli(capsys, "data", "preview", only_bad, "--out", tmp_path / "p.png")
    assert rc == 2 and "Traceback" not in err and err.strip().splitlines()[-1] == \
        f"error: {only_bad}: no image sequences found (1 skipped)"

