"""The demo tokenizer shipped in assets/demo-tokenizer: what `lvm demo` uses unless --train-tokenizer.

Fast: the files are there, small, loadable, and say how they were made. Slow: the commands in its README
reproduce its training (by default up to its first logged evaluation, step 1000, with the schedule of the
full run; LVM_REPRODUCE_STEPS=6000 runs the whole ~26 minutes) to within 0.5 dB of the logged PSNR.
"""

import json
import os
import shlex
from pathlib import Path

import pytest

from lvm_base.config import PROJECT_ROOT

SHIPPED = PROJECT_ROOT / "assets" / "demo-tokenizer"


def _logged_evals() -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (SHIPPED / "eval.jsonl").read_text().splitlines()) if r}


def _commands() -> list[list[str]]:
    """The `lvm ...` lines of the README's "Made by" block, as argument lists."""
    text = (SHIPPED / "README.md").read_text()
    block = text.split("```sh\n", 1)[1].split("```", 1)[0]
    return [shlex.split(ln)[1:] for ln in block.splitlines() if ln.startswith("lvm ")]


def test_shipped_demo_tokenizer_is_small_loadable_and_documented():
    from tokenizer import load_tokenizer

    weights = SHIPPED / "model.safetensors"
    assert weights.stat().st_size <= 10 * 2**20
    tok = load_tokenizer(SHIPPED, device="cpu", precision="fp32")
    assert tok.resolution == 128 and tok.codebook_size == 1024
    cmds = _commands()
    assert [c[:2] for c in cmds] == [["data", "build"], ["data", "build"], ["tokenizer", "train"]]
    assert cmds[-1][2] == "configs/tokenizer/demo.yaml"
    evals = _logged_evals()
    final = max(evals)
    assert final == json.loads((SHIPPED / "train_log.jsonl").read_text().splitlines()[-1])["step"]
    assert evals[final]["psnr"] > evals[min(evals)]["psnr"]  # the log is of a run that improved
    assert f"{evals[final]['psnr']:.2f} dB" in (SHIPPED / "README.md").read_text()


@pytest.mark.slow
def test_readme_commands_reproduce_the_shipped_tokenizer(tmp_path, monkeypatch):
    from lvm.cli import main

    steps = int(os.environ.get("LVM_REPRODUCE_STEPS", "1000"))
    evals = _logged_evals()
    assert steps in evals, f"no logged evaluation at step {steps}: {sorted(evals)}"
    monkeypatch.chdir(tmp_path)  # the commands write runs/... relative to the working directory
    *builds, train = _commands()
    for cmd in builds:
        assert main(cmd + ["--no-progress"]) == 0
    assert main(train + [f"stop_at_step={steps}", "--no-progress"]) == 0
    got = {r["step"]: r for r in map(json.loads, Path("runs/tok-demo/eval.jsonl").read_text().splitlines())}
    assert abs(got[steps]["psnr"] - evals[steps]["psnr"]) < 0.5, (got[steps], evals[steps])
    assert got[steps]["codebook_usage"] > 0.8 * evals[steps]["codebook_usage"]
