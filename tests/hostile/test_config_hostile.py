"""Hostile configs, prompt files, flags and environment through the real `lvm` CLI (issue 33, items 6, 8, 9).

Each case must end with exit code != 0 and one line `error: ...` that names the file, key or flag and the
problem, with no traceback, before any model, data or tokenizer loads. Cases that used to hang (an alias
bomb, `seq_len=-256`, a brace range of a billion shards) run as subprocesses under a timeout.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_util import ROOT, assert_one_line_error, cli

HANG_TIMEOUT = 120  # seconds: the fixed cases take a few (mostly importing torch); the hangs never ended


def _cli(capsys, *args) -> tuple[int, str]:
    """`lvm ARGS` in this process: (exit code, stderr)."""
    rc, _, err = cli(capsys, *args)
    return rc, err


def _subprocess(*args, env=None, timeout=HANG_TIMEOUT) -> tuple[int, str]:
    r = subprocess.run([sys.executable, "-m", "lvm", *map(str, args)], capture_output=True, text=True,
                       timeout=timeout, cwd=ROOT, env=env)
    return r.returncode, r.stderr


def _one_line(rc, err, *names):
    """One `error:` line naming `names`; argparse's refusals exit 2 like the command's own."""
    assert_one_line_error(rc, err, *names)


@pytest.fixture(scope="module")
def d(tmp_path_factory) -> Path:
    """Files the cases point at: images, prompt files, a JSONL, data configs."""
    root = tmp_path_factory.mktemp("hostile")
    for name in ("a1.png", "a2.png", "q.png"):
        Image.new("RGB", (8, 8), (10, 20, 30)).save(root / name)
    prompts = {
        "n_abc.yaml": "images: [a1.png]\nn: abc\n",
        "n_list.yaml": "images: [a1.png]\nn: [1]\n",
        "pair_glob.yaml": "mode: analogy\npairs: [['a*.png', q.png]]\nquery: q.png\n",
        "nested.yaml": "images: [[a1.png]]\n",
        "nested_missing.yaml": "images: [a1.png, [nope.png]]\n",
        "ok.yaml": "images: [a1.png]\n",
    }
    for name, text in prompts.items():
        (root / name).write_text(text)
    (root / "latin1.yaml").write_bytes("images: [a1.png]\ndescription: caf\xe9\n".encode("latin-1"))
    (root / "data_latin1.yaml").write_bytes(b"out: caf\xe9\nsources: [{type: builtin}]\n")
    (root / "train_latin1.yaml").write_bytes(b"# r\xe9glages\nmax_steps: 5\n")
    (root / "recursive.yaml").write_text("sources: &s [*s]\n")
    (root / "huge.yaml").write_text("# padding\n" * 200_000)
    (root / "strides.yaml").write_text("sources: [{type: videos, path: v, strides: [10, 0]}]\n")
    (root / "eval.jsonl").write_text(json.dumps({"input": ["a1.png"], "target": ["q.png"]}) + "\n")
    return root


# ---- item 6: what used to hang, each under a timeout ----

def _alias_bomb(levels=8) -> str:
    """A data config whose `layouts` (a list the builtin source ignores) nests 8 levels of 9 aliases: ~360
    bytes naming 9**8 values, which the build used to expand while writing its data_config.yaml."""
    anchors = ["[" + ", ".join(["lol"] * 9) + "]"]
    anchors += ["[" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    layouts = ", ".join(f"&a{i} {a}" for i, a in enumerate(anchors))
    return f"sources:\n  - type: builtin\n    count: 1\n    layouts: [{layouts}]\n"


def test_alias_bomb_data_config_is_refused_in_seconds(tmp_path):
    cfg = tmp_path / "bomb.yaml"
    cfg.write_text(_alias_bomb())
    assert cfg.stat().st_size < 700
    rc, err = _subprocess("data", "build", cfg, f"out={tmp_path / 'out'}")
    _one_line(rc, err, str(cfg), "aliases")
    assert not (tmp_path / "out").exists()  # nothing written, no 20 MB data_config.yaml


def test_train_negative_seq_len_is_refused_in_seconds(tmp_path):
    from data_builders.shards import write_token_shard

    rng = np.random.default_rng(0)
    write_token_shard(tmp_path / "tok" / "tokens-000000.tar",
                      [(f"s{i}", rng.integers(0, 64, (2, 256)), {"kind": "test"}) for i in range(8)])
    rc, err = _subprocess("train", "configs/train/tiny.yaml", "seq_len=-256", f"data.shards={tmp_path / 'tok'}",
                          f"out_dir={tmp_path / 'run'}", "model.codebook_size=64", "max_steps=2", "--no-progress")
    _one_line(rc, err, "seq_len", "-256")


def test_brace_range_of_a_billion_shards_is_refused_before_expanding(tmp_path):
    from tests.tiny import save_tiny_tokenizer

    tok = save_tiny_tokenizer(tmp_path / "tok")
    spec = str(tmp_path / "o" / "x-{0..999999999}.tar")
    rc, err = _subprocess("data", "tokenize", spec, "--tokenizer", tok, "--out", tmp_path / "tokens",
                          "--device", "cpu", "--no-progress")
    _one_line(rc, err, "x-{0..999999999}.tar", "1,000,000,000")


def test_brace_ranges_multiply_and_bounds_past_int64_are_refused():
    from lvm_base.errors import InputError
    from lvm_base.tar import expand_braces

    assert expand_braces("a-{0..1}-{08..10}.tar") == ["a-0-08.tar", "a-0-09.tar", "a-0-10.tar",
                                                      "a-1-08.tar", "a-1-09.tar", "a-1-10.tar"]
    with pytest.raises(InputError, match="2,000,000"):
        expand_braces("a-{0..1999}-{0..999}.tar")  # each range small, the product not
    with pytest.raises(InputError, match="18 digits"):
        expand_braces("a-{0..99999999999999999999999}.tar")


# ---- YAML files: encoding, size, aliases ----

@pytest.mark.parametrize("args, names", [
    (["data", "build", "{d}/data_latin1.yaml"], ["data_latin1.yaml", "UTF-8", "line 1"]),
    (["train", "{d}/train_latin1.yaml", "--print-config"], ["train_latin1.yaml", "UTF-8"]),
    (["data", "build", "{d}/recursive.yaml"], ["recursive.yaml", "recursive alias"]),
    (["data", "build", "{d}/huge.yaml"], ["huge.yaml", "too large"]),
    (["data", "build", "{d}/strides.yaml", "--print-config"], ["strides.yaml", "sources[0].strides", "[10, 0]"]),
    (["data", "build", "image_size=100000", "--print-config"], ["image_size", "8..8192"]),
    (["data", "build", "limit=-1", "--print-config"], ["limit", ">= 0"]),
], ids=["data-not-utf8", "train-not-utf8", "recursive-alias", "over-1MiB", "source-stride-0", "image-size",
        "limit"])
def test_bad_yaml_and_data_config_values(args, names, d, capsys):
    rc, err = _cli(capsys, *[a.format(d=d) for a in args])
    _one_line(rc, err, *names)


# ---- item 8: lvm train key=value (also under --print-config) ----

@pytest.mark.parametrize("override, names", [
    ("save_every=0", ["save_every", ">= 1"]),
    ("log_every=0", ["log_every"]),
    ("micro_batch=0", ["micro_batch"]),
    ("lr=nan", ["lr", "finite"]),
    ("lr=.inf", ["lr", "finite"]),
    ("model.num_attention_heads=0", ["model.num_attention_heads", ">= 1"]),
    ("seq_len=-256", ["seq_len"]),
    ("seq_len=300", ["seq_len", "multiple of 256"]),
    ("seed=99999999999999999999", ["seed", "int64"]),
    ("seed=-1", ["seed", "0..4294967295"]),
    ("betas=[0.9, 1.5]", ["betas"]),
    ("data.num_workers=-1", ["data.num_workers"]),
    ("model.num_key_value_heads=3", ["num_key_value_heads"]),
])
@pytest.mark.parametrize("print_config", [False, True], ids=["run", "print-config"])
def test_train_override_out_of_range(override, names, print_config, tmp_path, capsys):
    args = ["train", override, f"out_dir={tmp_path / 'run'}", f"data.shards={tmp_path / 'none'}"]
    rc, err = _cli(capsys, *args, *(["--print-config"] if print_config else []))
    _one_line(rc, err, *names)
    assert not (tmp_path / "run").exists()


# ---- items 8, 9: prompt files, refused while the flags are parsed (the model does not exist: never loaded) ----

@pytest.mark.parametrize("name, names", [
    ("latin1.yaml", ["latin1.yaml", "UTF-8", "line 2"]),
    ("n_abc.yaml", ["n_abc.yaml", "'n'", "'abc'"]),
    ("n_list.yaml", ["n_list.yaml", "'n'", "[1]"]),
    ("pair_glob.yaml", ["pair_glob.yaml", "pairs[0][0]", "matches 2"]),
    ("nested.yaml", ["nested.yaml", "'images'", "[['a1.png']]"]),
    ("nested_missing.yaml", ["nested_missing.yaml", "'images'"]),
])
def test_bad_prompt_file(name, names, d, tmp_path, capsys):
    rc, err = _cli(capsys, "prompt", "--prompt", d / name, "--model", tmp_path / "no-model",
                   "--tokenizer", tmp_path / "no-tok", "--no-display")
    _one_line(rc, err, "--prompt", *names)


# ---- items 8, 9: numeric flags, refused while parsing (before anything loads) ----

NOPE = ["--model", "{t}/no-model", "--tokenizer", "{t}/no-tok"]
FLAG_CASES = {
    "prompt-temperature-nan": (["prompt", "--prompt", "{d}/ok.yaml", "--temperature", "nan", *NOPE], "--temperature"),
    "prompt-seed-huge": (["prompt", "--prompt", "{d}/ok.yaml", "--seed", "99999999999999999999", *NOPE], "--seed"),
    "prompt-threads-negative": (["prompt", "--prompt", "{d}/ok.yaml", "--threads", "-1", *NOPE], "--threads"),
    "prompt-top-p-zero": (["prompt", "--prompt", "{d}/ok.yaml", "--top-p", "0", *NOPE], "--top-p"),
    "prompt-candidates-zero": (["prompt", "--prompt", "{d}/ok.yaml", "--candidates", "0", *NOPE], "--candidates"),
    "prompt-n-1000": (["prompt", "--prompt", "{d}/ok.yaml", "--n", "1000", *NOPE], "--n"),
    "prompt-resize-output-0": (["prompt", "--batch", "{d}/eval.jsonl", "--resize-output", "0,0", *NOPE],
                               "--resize-output"),
    "prompt-max-examples-negative": (["prompt", "--batch", "{d}/eval.jsonl", "--max-examples", "-1", *NOPE],
                                     "--max-examples"),
    "encode-batch-size-0": (["tokenizer", "encode", "{t}/no-tok", "{d}", "--out", "{t}/codes", "--batch-size", "0"],
                            "--batch-size"),
    "encode-batch-size-negative": (["tokenizer", "encode", "{t}/no-tok", "{d}", "--out", "{t}/codes",
                                    "--batch-size", "-1"], "--batch-size"),
    "recon-max-images-0": (["tokenizer", "recon", "{t}/no-tok", "{d}/a1.png", "--out", "{t}/r.png",
                            "--max-images", "0"], "--max-images"),
    "perplexity-batch-size-0": (["eval", "perplexity", "{d}/eval.jsonl", *NOPE, "--batch-size", "0"], "--batch-size"),
    "perplexity-max-examples-negative": (["eval", "perplexity", "{d}/eval.jsonl", *NOPE, "--max-examples", "-1"],
                                         "--max-examples"),
    "tasks-seed-negative": (["eval", "tasks", *NOPE, "--seed", "-1"], "--seed"),
    "tasks-max-minutes-inf": (["eval", "tasks", *NOPE, "--max-minutes", "inf"], "--max-minutes"),
}


@pytest.mark.parametrize("case", list(FLAG_CASES))
def test_numeric_flag_out_of_range(case, d, tmp_path, capsys):
    args, flag = FLAG_CASES[case]
    rc, err = _cli(capsys, *[a.format(d=d, t=tmp_path) for a in args])
    _one_line(rc, err, flag, "expected")
    assert not (tmp_path / "codes").exists() and not (tmp_path / "r.png").exists()


# ---- item 8: --candidates past the memory the KV cache may take (the CPU had no check) ----

def test_candidates_past_the_memory_are_one_line_before_generating(d, tmp_path, capsys, monkeypatch):
    import torch

    from lvm.generate import kernels

    # the refusal, not the decode kernels: on a machine without their build, compiling them prints a line first
    # (the module's load state is put back after, so later tests still get the kernels)
    monkeypatch.setenv("LVM_KERNELS", "0")
    monkeypatch.setattr(kernels, "_tried", kernels._tried)
    monkeypatch.setattr(kernels, "_why_not", kernels._why_not)

    from lvm.model import ModelConfig
    from tests.tiny import save_tiny_tokenizer

    torch.manual_seed(0)
    ModelConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                codebook_size=64, max_position_embeddings=256 * 4).build().save_pretrained(tmp_path / "lm")
    save_tiny_tokenizer(tmp_path / "tok")
    capsys.readouterr()  # the progress bars of saving
    # 10 million candidates: a 10 TiB cache for this tiny model, refused before it is allocated
    rc, err = _cli(capsys, "prompt", "--prompt", d / "ok.yaml", "--model", tmp_path / "lm", "--tokenizer",
                   tmp_path / "tok", "--device", "cpu", "--precision", "fp32", "--no-display",
                   "--candidates", "10000000", "--out", tmp_path / "out")
    _one_line(rc, err, "KV cache", "10000000 candidate(s)", "fewer candidates")
    assert not list((tmp_path / "out").rglob("*.png"))


# ---- item 8: RANK=abc in the environment ----

def test_rank_that_is_not_a_number(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RANK", "abc")
    rc, err = _cli(capsys, "train", f"out_dir={tmp_path / 'run'}", f"data.shards={tmp_path / 'none'}")
    _one_line(rc, err, "RANK", "'abc'")
    monkeypatch.setenv("WORLD_SIZE", "2")
    rc, err = _cli(capsys, "data", "build", f"out={tmp_path / 'data'}", "limit=1")
    _one_line(rc, err, "RANK", "'abc'")
    assert not (tmp_path / "run").exists() and not list((tmp_path / "data").rglob("*.tar"))
