import os
import subprocess
import sys

import pytest

from lvm.cli import COMMANDS, main


def _run(*args):
    return subprocess.run([sys.executable, "-m", "lvm", *args], capture_output=True, text=True)


def _all_commands():
    out = [()]
    for name, entry in COMMANDS.items():
        out.append((name,))
        if isinstance(entry[1], dict):
            out += [(name, leaf) for leaf in entry[1]]
    return out


@pytest.mark.parametrize("words", _all_commands(), ids=lambda w: " ".join(w) or "lvm")
def test_every_command_has_help_with_an_example(words, capsys):
    with pytest.raises(SystemExit) as e:
        main([*words, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: lvm") and "example" in out


def test_console_entry_and_bad_key_is_one_line_exit_2():
    r = _run("--help")
    assert r.returncode == 0 and "commands" in r.stdout
    r = _run("train", "bad_key=1")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "unknown key 'bad_key'" in lines[0]
    valid = lines[0].split("valid keys: ", 1)[1].split(", ")
    assert "model" in valid and "out_dir" in valid
    assert "Traceback" not in r.stderr


def test_a_launched_rank_ends_with_its_exit_code_after_the_exit_handlers():
    # As a rank of a 2-process launch the entry point ends by os._exit (no interpreter finalization, where
    # gloo's threads can abort a finished run); the exit code, the atexit handlers and the output survive.
    code = ("import atexit, os, sys, torch.distributed, lvm.cli as cli\n"
            "atexit.register(lambda: print('handlers ran', flush=True))\n"
            "class Finalized:\n"
            "    def __del__(self, write=os.write): write(1, b'finalized')\n"
            "kept = Finalized()\n"
            "cli.main = lambda: (print('ran', end=' '), sys.stdout.write('buffered'), 3)[-1]\n"
            "cli.entry()\n"
            "print('not reached')\n")
    for world, finalized in (("2", False), ("1", True)):
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "WORLD_SIZE": world})
        assert r.returncode == 3, r.stderr
        assert r.stdout.startswith("ran buffered") and "handlers ran" in r.stdout, r.stdout
        assert ("finalized" in r.stdout) == finalized and "not reached" not in r.stdout, (world, r.stdout)


def test_user_errors_are_one_line_and_debug_shows_traceback(tmp_path):
    r = _run("train", str(tmp_path / "missing.yaml"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "missing.yaml" in r.stderr
    r = _run("train", "model.hidden_size=abc")
    assert r.returncode == 2 and "model.hidden_size: " in r.stderr and "converted to Integer" in r.stderr
    r = _run("train", "--no-such-flag")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("error:")
    r = _run("--debug", "train", "bad_key=1")
    assert r.returncode != 0 and "Traceback" in r.stderr


# Commands that compute with torch; each takes the policy's two flags (lvm/commands/hardware_args.py).
# `lvm bench data` renders with pybullet and `lvm data build/stats/preview/export-jsonl` only move files.
COMPUTING = [("tokenizer", "train"), ("tokenizer", "eval"), ("tokenizer", "recon"), ("tokenizer", "encode"),
             ("tokenizer", "decode"), ("data", "tokenize"), ("train",), ("prompt",), ("eval", "perplexity"),
             ("eval", "tasks"), ("bench", "tokenizer"), ("bench", "train"), ("bench", "generate"), ("demo",)]


@pytest.mark.parametrize("words", COMPUTING, ids=" ".join)
def test_every_computing_command_takes_device_and_precision(words, capsys):
    with pytest.raises(SystemExit):
        main([*words, "--help"])
    out = capsys.readouterr().out
    assert "--device" in out and "--precision" in out
    assert "{auto,fp32,bf16,fp16}" in out


# The device is resolved before any file is read or work starts, so these fail on it even with no inputs.
NO_INPUTS = [("train",), ("prompt",), ("eval", "tasks"), ("bench", "tokenizer"), ("bench", "train"),
             ("bench", "generate"), ("demo",)]


@pytest.mark.parametrize("words", NO_INPUTS, ids=" ".join)
def test_device_cuda_without_a_gpu_is_one_line_exit_2(words, tmp_path, capsys, monkeypatch):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.chdir(tmp_path)  # nothing a command might write lands in the checkout
    assert main([*words, "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert any("no CUDA GPU" in line for line in err), err
    assert err[-1].startswith("error: ") and "no CUDA GPU" in err[-1]


LEAVES = [w for w in _all_commands() if w and not (isinstance(COMMANDS[w[0]][1], dict) and len(w) == 1)]


def _flags(words) -> dict:
    """{--flag: its argparse action} of the leaf command `words`."""
    import argparse

    from lvm.cli import build_parser

    p = build_parser(list(words))
    for w in words:
        p = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices[w]
    out = {}
    for a in p._actions:
        longs = [s for s in a.option_strings if s.startswith("--")]
        assert len(longs) <= 1, f"lvm {' '.join(words)}: {longs} are one flag spelled twice"
        out.update(dict.fromkeys(longs, a))
    return out


# Spellings retired for the one each idea has now (issue 34): --n, --candidates, --context (a count of
# context frames everywhere; --context-curve the lengths compared), --targets, --repeats, --batch-size
# (images per batch) and bench generate's --candidates 1,4 (a comma list, as every bench's --precision).
RETIRED = ["--n-new-frames", "--n-candidates", "--context-frames", "--n-context-frames", "--n-target-frames",
           "--prompt-images", "--iters", "--rounds"]


@pytest.mark.parametrize("words", LEAVES, ids=" ".join)
def test_one_spelling_per_flag(words):
    """No flag has an alias, no retired spelling is back, and a flag one idea takes means it alike."""
    flags = _flags(words)
    assert not set(RETIRED) & set(flags), f"lvm {' '.join(words)}: a retired spelling"
    if "--threads" in flags:  # 0 = torch's default (bench train: 0 = auto) everywhere, never None
        assert flags["--threads"].default == 0
    if "--context" in flags:  # a count of frames, never a list
        assert flags["--context"].default is None or isinstance(flags["--context"].default, int)


def test_sampling_flags_default_to_the_one_home():
    from lvm.eval.tasks.config import SuiteConfig
    from lvm.generate.sampling import DEFAULTS, SUITE

    for words in (("prompt",), ("bench", "generate")):
        f = {k: a.default for k, a in _flags(words).items()}
        assert (f["--temperature"], f["--top-k"], f["--seed"]) == (DEFAULTS.temperature, DEFAULTS.top_k,
                                                                 DEFAULTS.seed), words
    assert _flags(("prompt",))["--top-p"].default == DEFAULTS.top_p
    tasks, suite = _flags(("eval", "tasks")), SuiteConfig()
    assert (tasks["--top-k"].default, tasks["--top-p"].default) == (SUITE.top_k, SUITE.top_p) == (suite.top_k,
                                                                                                  suite.top_p)


def test_overrides_after_a_flag_reach_the_config(capsys):
    assert main(["train", "configs/train/tiny.yaml", "--print-config", "lr=0.125", "max_steps=7"]) == 0
    out = capsys.readouterr().out
    assert "lr: 0.125" in out and "max_steps: 7" in out
    with pytest.raises(SystemExit) as e:  # what is neither a flag nor key=value stays argparse's refusal
        main(["train", "configs/train/tiny.yaml", "--print-config", "--bogus"])
    assert e.value.code == 2
