"""Hub ids as checkpoints: `owner/name[@revision][/sub/folder]` resolves through a Hugging Face cache.

The cache is laid out in tmp_path the way huggingface_hub writes it (refs/<revision> holding a commit hash,
snapshots/<commit>/... as relative symlinks into blobs/), and every test runs offline: nothing here may
reach the network, and an uncached id must fail at once.
"""

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lvm.checkpoints import load_causal_lm, load_pair
from lvm.cli import main
from lvm.model import ModelConfig
from lvm.tokens import TOKENS_PER_IMAGE
from tokenizer import load_tokenizer
from lvm_base.errors import InputError
from tiny import save_tiny_tokenizer
from lvm_base.hub import resolve_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

K = 64
MAIN = "a" * 40
V1 = "b" * 40


def _cache_repo(cache: Path, repo_id: str, content: dict[str, Path], commit: str = MAIN, ref: str = "main"):
    """Put directories `content` ({folder in the repo ("" = top): local dir}) into `cache` as huggingface_hub
    lays out a downloaded snapshot of `repo_id` at `ref`."""
    root = cache / ("models--" + repo_id.replace("/", "--"))
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / ref).write_text(commit)  # no trailing newline, as huggingface_hub writes it
    snap = root / "snapshots" / commit
    for prefix, src in content.items():
        for f in sorted(p for p in src.rglob("*") if p.is_file()):
            data = f.read_bytes()
            blob = root / "blobs" / hashlib.sha256(data).hexdigest()
            blob.parent.mkdir(exist_ok=True)
            blob.write_bytes(data)
            link = snap / prefix / f.relative_to(src)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))
    return snap


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """(cache dir, local tokenizer dir, local model dir) with repos owner/tok, owner/lm (main and v1) and
    owner/both (model/ and tokenizer/ subfolders)."""
    base = tmp_path_factory.mktemp("hub")
    save_tiny_tokenizer(base / "tok", K)
    ModelConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, codebook_size=K,
                max_position_embeddings=TOKENS_PER_IMAGE * 2).build().save_pretrained(base / "lm")
    cache = base / "cache"
    _cache_repo(cache, "owner/tok", {"": base / "tok"})
    _cache_repo(cache, "owner/lm", {"": base / "lm"})
    _cache_repo(cache, "owner/lm", {"": base / "lm"}, commit=V1, ref="v1")
    _cache_repo(cache, "owner/both", {"model": base / "lm", "tokenizer": base / "tok"})
    return cache, base / "tok", base / "lm"


@pytest.fixture
def offline_cache(hub, monkeypatch):
    """huggingface_hub reads HF_HUB_CACHE / HF_HUB_OFFLINE into its constants at import: patch those."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub[0]))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return hub


def test_loaders_read_hub_ids_from_the_cache(offline_cache):
    from huggingface_hub import scan_cache_dir

    cache, tok_dir, lm_dir = offline_cache
    scan = scan_cache_dir(cache)  # huggingface_hub itself recognises the hand-made cache
    assert not scan.warnings and {r.repo_id for r in scan.repos} == {"owner/tok", "owner/lm", "owner/both"}
    tok = load_tokenizer("owner/tok", device="cpu", precision="fp32")
    ref = load_tokenizer(tok_dir, device="cpu", precision="fp32")
    assert tok.codebook_size == K and tok.codes_per_image == TOKENS_PER_IMAGE
    assert all(torch.equal(a, b) for a, b in zip(tok.state_dict().values(), ref.state_dict().values()))

    model, plan = load_causal_lm("owner/lm", "cpu", "fp32")
    assert model.config.vocab_size == K + 100 and plan.device_type == "cpu"

    # Subfolders: the model and the tokenizer of one repository, fitted together.
    model, tok, _ = load_pair("owner/both/model", "owner/both/tokenizer", "cpu", "fp32")
    assert model.config.vocab_size == K + 100 and tok.codebook_size == K

    assert resolve_checkpoint("owner/lm@v1") == cache / "models--owner--lm" / "snapshots" / V1
    assert resolve_checkpoint("owner/lm") == cache / "models--owner--lm" / "snapshots" / MAIN
    assert resolve_checkpoint("owner/both@main/model/") == \
        cache / "models--owner--both" / "snapshots" / MAIN / "model"


def test_explicit_cache_dir_and_local_paths(hub, tmp_path, monkeypatch):
    cache = hub[0]
    assert resolve_checkpoint("owner/tok", "tokenizer", cache_dir=cache) == \
        cache / "models--owner--tok" / "snapshots" / MAIN
    # A local directory wins over the hub id it also spells.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "owner" / "tok").mkdir(parents=True)
    assert resolve_checkpoint("owner/tok", cache_dir=cache) == Path("owner/tok")
    # What cannot be a hub id is a local path, returned as is for the loader to judge.
    for spec in [tmp_path / "nope", "./a/b", "../a/b", "~/a/b", "single", "a--b/c", "a/b/../c"]:
        assert resolve_checkpoint(spec, cache_dir=cache) == Path(spec)
    # ... so the loaders' own one-line errors for local paths stay as they were.
    with pytest.raises(InputError, match="nope: no such tokenizer checkpoint"):
        load_tokenizer(tmp_path / "nope", device="cpu")
    with pytest.raises(InputError, match=r"nope: not a model directory \(no config.json\)"):
        load_causal_lm(tmp_path / "nope", "cpu")


def test_uncached_id_or_missing_subfolder_is_one_line_at_once(offline_cache):
    t = time.perf_counter()
    for spec, kind in [("Emma02/LVM_ckpts", "model"), ("Emma02/vqvae_ckpts/sub", "tokenizer"),
                       ("owner/lm@v2", "model")]:
        with pytest.raises(InputError) as e:
            resolve_checkpoint(spec, kind)
        msg = str(e.value)
        assert "\n" not in msg and msg.startswith(f"{spec}: not a local path and not in the Hugging Face cache")
        assert "HF_HUB_OFFLINE=1" in msg and str(offline_cache[0]) in msg
    assert time.perf_counter() - t < 5

    with pytest.raises(InputError) as e:
        load_tokenizer("owner/both/nope", device="cpu")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("owner/both/nope: no nope in the snapshot of owner/both")
    assert "model/, tokenizer/" in msg  # what there is to pick from


def _image(tmp_path) -> Path:
    p = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(p)
    return p


def test_cli_reads_a_hub_id_from_the_cache(offline_cache, tmp_path, capsys):
    img = _image(tmp_path)
    rc = main(["tokenizer", "recon", "owner/both/tokenizer", str(img), "--out", str(tmp_path / "recon.png"),
               "--device", "cpu", "--precision", "fp32"])
    assert rc == 0 and (tmp_path / "recon.png").is_file()
    rc = main(["tokenizer", "recon", "owner/missing", str(img), "--out", str(tmp_path / "x.png"), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: owner/missing: not a local path")


def test_console_uncached_id_exits_2_with_one_line(hub, tmp_path):
    """The real entry point, with the cache and offline mode given as environment variables."""
    env = {**os.environ, "HF_HUB_CACHE": str(hub[0]), "HF_HUB_OFFLINE": "1"}
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "lvm", "tokenizer", "recon", "Emma02/vqvae_ckpts", str(_image(tmp_path)),
                        "--out", str(tmp_path / "x.png"), "--device", "cpu"], capture_output=True, text=True, env=env)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith("error: Emma02/vqvae_ckpts: not a local path and not in the Hugging Face cache")
    assert str(hub[0]) in lines[0] and "Traceback" not in r.stderr
    assert time.perf_counter() - t < 60  # the import of torch, not a network time-out


def test_unreachable_hub_falls_back_to_the_cache_or_fails_at_once(hub, monkeypatch):
    """Online mode with the hub unreachable (a refused local port): a cached id still resolves from the
    cache, an uncached one is a one-line error, both without waiting on a time-out."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub[0]))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    t = time.perf_counter()
    assert resolve_checkpoint("owner/tok") == hub[0] / "models--owner--tok" / "snapshots" / MAIN
    with pytest.raises(InputError) as e:
        resolve_checkpoint("owner/missing")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("owner/missing: not a local path, not in the Hugging Face cache")
    assert "the hub cannot be reached (" in msg
    assert time.perf_counter() - t < 10


def test_a_tokenizer_directory_is_not_loaded_as_a_model(hub):
    from lvm.checkpoints import load_causal_lm

    # Without the model_type check transformers would build a default-size (7B) Llama from its config.
    with pytest.raises(InputError, match="not a Llama model directory"):
        load_causal_lm(hub[1], device="cpu")
