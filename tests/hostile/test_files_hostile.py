"""Hostile but fair use of the commands that write files: nothing lost, nothing silently mixed, normal modes.

Each case runs the real CLI (`lvm.cli.main`, the `lvm` executable's entry point, in process; one case as
a subprocess) and checks the exit code, that the error is one line naming the file and what is wrong,
with no traceback, and that the inputs and unrelated files are byte for byte what they were.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_util import ROOT, assert_one_line_error, cli, snapshot
from tiny import save_tiny_tokenizer

CPI = 256  # codes per image of the tiny tokenizers (32 px, f = 2)


def png(path: Path, value: int, size=(40, 40)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, 255 - value, 80)).save(path)
    return path


def image_folder(root: Path, n: int = 4) -> Path:
    for i in range(n):
        png(root / f"im{i}.png", 40 * i)
    return root


# ---------------------------------------------------------------- data loss

def test_import_jsonl_never_deletes_other_token_shards(tmp_path, capsys):
    """The issue's case: token shards of `lvm data tokenize` (builtin-*.tar), exported and imported back
    into their own folder, lost all but one shard."""
    from data_builders.encode import export_jsonl, write_tokens_info
    from data_builders.shards import write_token_shard

    tokens = tmp_path / "tokens"
    rng = np.random.default_rng(0)
    for j in range(3):
        write_token_shard(tokens / f"builtin-{j:06d}.tar",
                          [(f"s{j}", rng.integers(0, 64, (2, CPI)), {"kind": "video", "image_shard": "x.tar"})])
    write_tokens_info(tokens, {"tokenizer": "runs/tok", "codebook_size": 64, "codes_per_image": CPI})
    jsonl = tmp_path / "builtin.jsonl"  # its shards would be named builtin-000000.tar ...
    export_jsonl(tokens, jsonl, progress=False)
    (tokens / "notes.txt").write_text("unrelated")
    before = snapshot(tokens, jsonl)
    for extra in ([], ["--fresh"]):  # --fresh replaces earlier imports only: never shards that another command wrote
        rc, _, err = cli(capsys, "data", "import-jsonl", jsonl, "--out", tokens, "--codebook-size", 64, "--no-progress",
                         *extra)
        line = assert_one_line_error(rc, err, tokens, "builtin-0000")
        assert "no import-jsonl wrote" in line
        assert snapshot(tokens, jsonl) == before


def test_import_jsonl_refusal_through_the_executable(tmp_path):
    """The same refusal as a process: exit 2, one stderr line, no traceback, the shard untouched."""
    from data_builders.shards import write_token_shard

    out = tmp_path / "out"
    write_token_shard(out / "rel-000000.tar", [("k", np.zeros((1, CPI), int), {"kind": "video"})])
    jsonl = tmp_path / "rel.jsonl"
    raw = np.zeros(CPI, "<i4").tobytes()
    jsonl.write_text(json.dumps({"tokens": base64.b64encode(raw).decode()}) + "\n")
    before = snapshot(out, jsonl)
    r = subprocess.run([sys.executable, "-m", "lvm", "data", "import-jsonl", str(jsonl), "--out", str(out),
                        "--no-progress"], capture_output=True, text=True, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert_one_line_error(r.returncode, r.stderr, out, "rel-000000.tar")
    assert snapshot(out, jsonl) == before


def test_import_jsonl_rerun_with_another_codebook_is_refused_unless_fresh(tmp_path, capsys):
    jsonl = tmp_path / "rel.jsonl"
    raw = np.arange(2 * CPI, dtype="<i4").tobytes()  # ids up to 511
    jsonl.write_text(json.dumps({"tokens": base64.b64encode(raw).decode()}) + "\n")
    out = tmp_path / "out"
    base = ["data", "import-jsonl", jsonl, "--out", out, "--no-progress"]
    assert cli(capsys, *base, "--codebook-size", 1024)[0] == 0
    assert cli(capsys, *base, "--codebook-size", 1024)[0] == 0  # a rerun replaces its own import
    (out / "notes.txt").write_text("unrelated")
    before = snapshot(out)
    rc, _, err = cli(capsys, *base, "--codebook-size", 512)
    assert "codebook_size 1024 -> 512" in assert_one_line_error(rc, err, out)
    assert snapshot(out) == before
    assert cli(capsys, *base, "--codebook-size", 512, "--fresh")[0] == 0
    assert json.loads((out / "tokens_info.json").read_text())["codebook_size"] == 512
    assert (out / "notes.txt").read_text() == "unrelated"


def test_encode_of_cat_png_and_cat_jpg_is_refused(tmp_path, capsys):
    tok = save_tiny_tokenizer(tmp_path / "tok")
    images = tmp_path / "images"
    png(images / "cat.png", 10)
    Image.new("RGB", (40, 40), (200, 30, 30)).save(images / "cat.jpg")
    png(images / "dog.png", 90)
    before = snapshot(images)
    rc, _, err = cli(capsys, "tokenizer", "encode", tok, images, "--out", tmp_path / "codes", "--device", "cpu")
    assert_one_line_error(rc, err, tmp_path / "codes" / "cat.npy", "cat.png", "cat.jpg")
    assert snapshot(images) == before and not (tmp_path / "codes").exists()  # refused before writing anything
    rc, _, err = cli(capsys, "tokenizer", "encode", tok, images / "dog.png", "--out", tmp_path / "codes",
                     "--batch-size", -1, "--device", "cpu")
    assert_one_line_error(rc, err, "--batch-size", "-1")


def test_batch_line_whose_output_is_its_input_is_refused(tmp_path, capsys, one_thread):
    import torch

    from lvm.model import ModelConfig

    torch.manual_seed(0)
    ModelConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                codebook_size=64, max_position_embeddings=256 * 4).build().save_pretrained(tmp_path / "model")
    tok = save_tiny_tokenizer(tmp_path / "tok")
    a, b = png(tmp_path / "in" / "a.png", 10), png(tmp_path / "in" / "b.png", 200)
    (tmp_path / "link.png").symlink_to(b)
    rows = [{"input": [str(a), str(b)], "output": str(a)},  # the line's own input, by its path
            {"input": [str(a)], "output": str(tmp_path / "in" / ".." / "link.png")}]  # b through ../ and a link
    jl = tmp_path / "b.jsonl"
    jl.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    before = snapshot(tmp_path / "in", jl)
    base = ["prompt", "--model", tmp_path / "model", "--tokenizer", tok, "--precision", "fp32", "--device", "cpu",
            "--no-display", "--batch", jl, "--out", tmp_path / "log"]
    rc, out, err = cli(capsys, *base)
    assert rc == 1, err  # both lines skipped, and said so
    assert "Traceback" not in err + out
    skipped = [ln for ln in out.splitlines() if ln.startswith("skipped")]
    assert len(skipped) == 2, out
    assert str(a) in skipped[0] and "the output is the image" in skipped[0]
    assert "link.png" in skipped[1] and str(b) in skipped[1]
    assert "0 generated" in out
    assert snapshot(tmp_path / "in", jl) == before
    rc, _, err = cli(capsys, *base, "--max-examples", -1)
    assert_one_line_error(rc, err, "--max-examples")


# ---------------------------------------------------------------- silent mixing on rerun

def _data_config(tmp_path, images: Path, out: Path, size: int = 16) -> Path:
    cfg = tmp_path / "data.yaml"
    cfg.write_text(f"out: {out}\nimage_size: {size}\nshard_size: 2\nseed: 3\n"
                   f"sources:\n  - type: images\n    path: {images}\n")
    return cfg


def test_data_build_rerun_with_another_image_size_is_refused_unless_fresh(tmp_path, capsys):
    images = image_folder(tmp_path / "images", 4)
    (images / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    cfg = _data_config(tmp_path, images, out)
    rc, stdout, _ = cli(capsys, "data", "build", cfg, "--no-progress")
    assert rc == 0
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["items_skipped"] == 1 and summary["skipped_by_reason"] == {"image_corrupt": 1}  # item 9
    (out / "notes.txt").write_text("unrelated")
    (out / "other.tar").write_bytes(b"someone else's")
    before = snapshot(out, images)
    rc, _, err = cli(capsys, "data", "build", cfg, "image_size=24", "--no-progress")
    assert "image_size 16 -> 24" in assert_one_line_error(rc, err, out, "--fresh")
    assert snapshot(out, images) == before  # data_config.yaml included: it still says 16
    rc, stdout, _ = cli(capsys, "data", "build", cfg, "--no-progress")  # the same config resumes
    assert rc == 0 and json.loads(stdout.strip().splitlines()[-1])["shards_built"] == 0
    rc, stdout, _ = cli(capsys, "data", "build", cfg, "image_size=24", "--fresh", "--no-progress")
    assert rc == 0 and json.loads(stdout.strip().splitlines()[-1])["shards_skipped"] == 0
    from data_builders.sequence import sample_images
    from lvm_base.tar import iter_tar_samples

    first = next(iter_tar_samples(out / "images-000000.tar"))
    assert sample_images(first)[0].size == (24, 24)
    assert (out / "notes.txt").read_text() == "unrelated" and (out / "other.tar").read_bytes() == b"someone else's"


def test_data_tokenize_rerun_with_another_tokenizer_is_refused_unless_fresh(tmp_path, capsys):
    from data_builders.build import build
    from data_builders.config import DataConfig, SourceConfig
    from data_builders.shards import iter_token_shard

    images = tmp_path / "img"
    build(DataConfig(out=str(images), image_size=32, shard_size=2, sources=[
        SourceConfig(type="images", path=str(image_folder(tmp_path / "src", 3)))]), progress=False, log=lambda *a: None)
    tok64 = save_tiny_tokenizer(tmp_path / "tok64", codebook_size=64)
    tok512 = save_tiny_tokenizer(tmp_path / "tok512", codebook_size=512)
    retrained = save_tiny_tokenizer(tmp_path / "tok64b", codebook_size=64, seed=1)
    out = tmp_path / "tokens"
    base = ["data", "tokenize", images, "--out", out, "--device", "cpu", "--no-progress"]
    assert cli(capsys, *base, "--tokenizer", tok64)[0] == 0
    (out / "notes.txt").write_text("unrelated")
    before = snapshot(out, images)
    rc, _, err = cli(capsys, *base, "--tokenizer", tok512)
    assert "codebook_size 64 -> 512" in assert_one_line_error(rc, err, out, "--fresh")
    rc, _, err = cli(capsys, *base, "--tokenizer", retrained)  # same K, other weights
    assert "tokenizer_sha256" in assert_one_line_error(rc, err, out)
    rc, _, err = cli(capsys, "data", "tokenize", images, "--out", images, "--tokenizer", tok64, "--device", "cpu")
    assert_one_line_error(rc, err, images / "images-000000.tar")  # --out = the input shards
    assert snapshot(out, images) == before
    rc, stdout, _ = cli(capsys, *base, "--tokenizer", tok64)  # the same tokenizer resumes
    assert rc == 0 and json.loads(stdout.strip().splitlines()[-1])["shards_done"] == 0
    assert cli(capsys, *base, "--tokenizer", tok512, "--fresh")[0] == 0
    info = json.loads((out / "tokens_info.json").read_text())
    assert info["codebook_size"] == 512 and info["tokenizer"] == str(tok512)
    metas = [m for sh in sorted(out.glob("*.tar")) for _, _, m in iter_token_shard(sh)]
    assert len(metas) == 3 and {m["codebook_size"] for m in metas} == {512}
    assert (out / "notes.txt").read_text() == "unrelated"


# ---------------------------------------------------------------- file modes

@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_written_files_get_the_mode_the_umask_gives(tmp_path, capsys, umask):
    """Shards, stats, configs, checkpoints and PNGs: what `open(path, "w")` would give, not mkstemp's 0600
    (nor the 0600 of safetensors' own temp file, which `save_file` renames into place)."""
    import torch
    from safetensors.torch import save_file

    from lvm_base.files import atomic_write_text, give_normal_modes

    old = os.umask(umask)
    try:
        images = image_folder(tmp_path / "images", 2)
        out = tmp_path / "out"
        assert cli(capsys, "data", "build", _data_config(tmp_path, images, out, 32), "--no-progress")[0] == 0
        tok = save_tiny_tokenizer(tmp_path / "tok")  # checkpoint: model.safetensors + config.json
        assert cli(capsys, "tokenizer", "encode", tok, images, "--out", tmp_path / "codes", "--device", "cpu")[0] == 0
        assert cli(capsys, "tokenizer", "decode", tok, tmp_path / "codes", "--out", tmp_path / "png",
                   "--device", "cpu")[0] == 0
        atomic_write_text(tmp_path / "run" / "config.yaml", "a: 1\n")
        save_file({"w": torch.zeros(2)}, str(tmp_path / "run" / "state.safetensors"))  # a checkpoint folder's
        give_normal_modes(tmp_path / "run")  # what a whole-folder save does before its rename
    finally:
        os.umask(old)
    files = [*out.glob("*.tar"), *out.glob("*.stats.json"), out / "data_config.yaml", tok / "model.safetensors",
             tok / "config.json", *(tmp_path / "codes").glob("*.npy"), *(tmp_path / "png").glob("*.png"),
             tmp_path / "run" / "config.yaml", tmp_path / "run" / "state.safetensors"]
    assert len(files) == 11
    modes = {str(f.relative_to(tmp_path)): oct(f.stat().st_mode & 0o777) for f in files}
    assert set(modes.values()) == {oct(0o666 & ~umask)}, modes
