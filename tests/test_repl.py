"""The `lvm prompt` session: scripted REPL (piped stdin), bad input never ends it, one-shot and batch modes."""

import io
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from lvm.model import ModelConfig

K = 64


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: decoding is latency-bound


def _model_dir(path, codebook=K):
    torch.manual_seed(0)
    cfg = ModelConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      codebook_size=codebook, max_position_embeddings=256 * 4)
    cfg.build().save_pretrained(path)
    return path


def _tok_dir(path, codebook=K):
    from tokenizer import VQGAN, VQGANConfig

    torch.manual_seed(0)
    # 32 px, f=2 -> a 16x16 grid = 256 codes per image, as the token contract wants.
    VQGAN(VQGANConfig(resolution=32, hidden_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                      attn_resolutions=(), mid_attention=False, z_channels=8, embed_dim=8,
                      codebook_size=codebook, precision="fp32")).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("repl")
    imgs = []
    for i in range(4):
        p = root / f"im{i}.png"
        Image.new("RGB", (40, 40), (60 * i, 100, 200 - 40 * i)).save(p)
        imgs.append(p)
    (root / "notes.txt").write_text("not an image")
    (root / "p.yaml").write_text("mode: analogy\npairs: [[im0.png, im1.png]]\nquery: im2.png\ntarget: im3.png\n")
    return {"root": root, "model": _model_dir(root / "model"), "tok": _tok_dir(root / "tok"),
            "tok_big": _tok_dir(root / "tok_big", codebook=128), "imgs": imgs}


def _session(dirs, tok="tok"):
    from lvm.prompt.session import Session

    lines = []
    s = Session(dirs["model"], dirs[tok], out_dir=dirs["root"] / "out", display="none", precision="fp32",
                print_fn=lambda *a: lines.append(" ".join(map(str, a))))
    return s, lines


def test_scripted_session_and_bad_input(dirs, capsys):
    from lvm.prompt.repl import repl

    r = dirs["root"]
    s, lines = _session(dirs)
    script = "\n".join([
        f"/load {r / 'p.yaml'}",
        "/candidates 2",
        f"{r / 'missing.png'}",     # missing file
        f"{r / 'notes.txt'}",       # not an image
        "/set temperature abc",     # bad value
        "/frobnicate",              # unknown command
        "/gen",
        "/set temperature 0.5",
        "/gen",
        "/show",
        f"/save {r / 'saved'}",
        "/undo",
        "/quit",
        "/show",                    # never reached
    ]) + "\n"
    assert repl(s, io.StringIO(script)) == 0
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 4, lines
    assert "missing.png" in errors[0] and "no such file" in errors[0]
    assert "notes.txt" in errors[1] and "cannot read image" in errors[1]
    assert "not a number" in errors[2] and "unknown command /frobnicate" in errors[3]
    assert all("\n" not in e for e in errors)
    saved = r / "saved"
    assert (saved / "prompt.yaml").is_file() and (saved / "grid.png").is_file()
    assert len(list(saved.glob("candidate*.png"))) == 2
    info = json.loads((saved / "generation.json").read_text())
    assert info["sampling"]["temperature"] == 0.5 and info["candidates"] == 2 and info["seeds"] == [0, 1]
    assert all((saved / f).is_file() for f in info["files"])  # names the saved copies ...
    assert info["prompt"] and all((saved / f).is_file() for f in info["prompt"])  # ... the prompt's too
    assert (r / "out" / "gen001" / "grid.png").is_file() and (r / "out" / "gen002" / "grid.png").is_file()
    a = Image.open(r / "out" / "gen002" / "candidate0_seed0_img0.png")
    b = Image.open(r / "out" / "gen002" / "candidate1_seed1_img0.png")
    assert a.size == (32, 32) and a.tobytes() != b.tobytes()
    assert any("removed query" in ln for ln in lines)
    assert lines[-1] == "lvm> /quit"  # /quit ended the loop before the last /show
    # The saved prompt loads back with the same structure.
    from lvm.prompt.prompts import load_prompt

    p = load_prompt(saved / "prompt.yaml")
    assert p.mode == "analogy" and len(p.images) == 3 and len(p.target) == 1


def test_tokenizer_model_mismatch_is_one_line(dirs):
    from lvm.prompt.repl import repl

    s, lines = _session(dirs, tok="tok_big")  # 128 codes vs a model made for 64
    assert any(ln.startswith("warning:") and "128 codes" in ln for ln in lines)
    script = f"{dirs['imgs'][0]}\n/gen\n/show\n"
    repl(s, io.StringIO(script))
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and "tokenizer has 128 codes" in errors[0] and "codebook of 64" in errors[0]
    assert lines[-2].startswith("mode sequential")  # /show ran after the error


def test_prompt_errors(dirs):
    s, _ = _session(dirs)
    from lvm.prompt.repl import command
    from lvm_base.errors import InputError

    with pytest.raises(InputError, match="no images"):
        s.generate(1)
    command(s, f"/pair {dirs['imgs'][0]} {dirs['imgs'][1]}")
    with pytest.raises(InputError, match="query"):
        s.generate(1)
    with pytest.raises(InputError, match="usage: /pair"):
        command(s, "/pair a")


def test_one_shot_and_batch_cli(dirs, tmp_path, capsys, one_thread):
    from tests.hostile.cli_util import cli

    r = dirs["root"]
    # In this process (the executable's own start and exit are checked by the bad-model run below).
    base = ["prompt", "--model", dirs["model"], "--tokenizer", dirs["tok"], "--precision", "fp32", "--no-display",
            "--threads", "1"]
    out = tmp_path / "one"
    rc, _, err = cli(capsys, *base, "--prompt", r / "p.yaml", "--out", out, "--candidates", "2")
    assert rc == 0, err
    assert (out / "grid.png").is_file() and len(list(out.glob("candidate*.png"))) == 2
    jl = tmp_path / "b.jsonl"
    rows = [{"input": [str(x) for x in dirs["imgs"][:2]], "output": str(tmp_path / "o1.png"),
             "target": str(dirs["imgs"][2])},  # a single path: read as a one-item list
            {"input": [str(r / "notes.txt")], "output": str(tmp_path / "o2.png"), "target": [str(dirs["imgs"][2])]}]
    jl.write_text("\n".join(json.dumps(x) for x in rows) + "\n")
    rc, stdout, err = cli(capsys, *base, "--batch", jl, "--temperature", "0", "--evaluate-mse", "--out", tmp_path)
    assert rc == 1, err  # one line skipped
    assert "MSE" in stdout and "skipped" in stdout and "notes.txt" in stdout
    assert Image.open(tmp_path / "o1.png").size == (32, 2 * 32)  # 2 candidates (the release's default) x 1 frame
    assert not (tmp_path / "o2.png").exists()
    # Bad model path: one line, exit 2.
    p = subprocess.run([sys.executable, "-m", "lvm", "prompt", "--model", str(tmp_path / "nope"),
                        "--tokenizer", str(dirs["tok"]), "--prompt", str(r / "p.yaml")],
                       capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0 and "no config.json" in p.stderr


def test_ctrl_c_cancels_generation_not_session(dirs):
    from lvm.prompt.repl import repl

    s, lines = _session(dirs)
    real, calls = s.engine.forward, [0]

    def interrupted(*a, **k):  # Ctrl-C arrives as KeyboardInterrupt in the middle of decoding
        calls[0] += 1
        if calls[0] == 10:
            raise KeyboardInterrupt
        return real(*a, **k)

    s.engine.forward = interrupted
    repl(s, io.StringIO(f"{dirs['imgs'][0]}\n/gen\n/candidates 3\n/show\n"))
    assert any("generation cancelled" in ln for ln in lines)
    assert "candidates = 3" in lines and any(ln.startswith("mode sequential") for ln in lines)
    assert s.last is None  # nothing half-written was recorded


def test_released_layout_prompt_is_raw_squashed_tokens(dirs, tmp_path):
    """Released tokenizer dir (MUSE layout: [0,1] pixels, squash resize) + released-style model config:
    the prompt the engine gets is exactly the images' raw codes in order (no BOS), as the released inference."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from lvm.prompt.repl import command
    from lvm.prompt.session import Session
    from tokenizer import VQGAN, VQGANConfig
    from lvm_base.image_io import load_image, pil_to_tensor

    cfg = VQGANConfig(resolution=32, hidden_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                      attn_resolutions=(), mid_attention=False, z_channels=8, embed_dim=8, codebook_size=K)
    tok_dir = tmp_path / "released_tok"
    tok_dir.mkdir()
    torch.manual_seed(1)
    torch.save(VQGAN(cfg).state_dict(), tok_dir / "pytorch_model.bin")
    (tok_dir / "config.json").write_text(json.dumps(dict(
        resolution=32, num_channels=3, hidden_channels=32, channel_mult=[1, 2], num_res_blocks=1,
        attn_resolutions=[], no_attn_mid_block=True, z_channels=8, quantized_embed_dim=8, num_embeddings=K,
        commitment_cost=0.25, dropout=0.0, resample_with_conv=True, _class_name="VQGANModel")))
    model_dir = tmp_path / "released_model"
    LlamaForCausalLM(LlamaConfig(vocab_size=K + 100, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, max_position_embeddings=1024, rms_norm_eps=1e-6,
                                 tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)).save_pretrained(model_dir)
    lines = []
    s = Session(model_dir, tok_dir, display="none", precision="fp32", print_fn=lines.append)
    assert s.tok.value_range == (0.0, 1.0) and s.tok.resize_mode == "squash"
    seen = {}
    real = s.engine.generate

    def spy(prompt, **kw):
        seen["prompt"] = prompt
        return real(prompt, **kw)

    s.engine.generate = spy
    wide = tmp_path / "wide.png"  # not square: squash, not crop
    Image.new("RGB", (64, 32), (10, 200, 30)).save(wide)
    paths = [dirs["imgs"][0], wide]
    command(s, " ".join(map(str, paths)))
    res = s.generate(1, write=False)
    x = torch.stack([pil_to_tensor(load_image(p).resize((32, 32), Image.Resampling.BICUBIC), (0.0, 1.0))
                     for p in paths])
    with torch.no_grad():
        expect = s.tok.encode(x)
    assert torch.equal(seen["prompt"], expect)  # (2, 256) raw codes, nothing prepended
    assert res["images"][0][0].size == (32, 32) and int(res["generation"].images.max()) < K


def _release_batch_files(root, n_lines=2):
    """A batch file as the release documents it: relative paths under base dirs, "target" a list."""
    data = root / "data"
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n_lines):
        names = [f"clip{i}/f{j}.png" for j in range(5)]
        for j, n in enumerate(names):
            (data / n).parent.mkdir(parents=True, exist_ok=True)
            size = (48, 40) if j == 2 else (32, 32)  # the last input's size is what "original" means
            Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(data / n)
        rows.append({"input": names[:3], "output": f"gen/clip{i}.png", "target": names[3:]})
    jl = root / "batch.jsonl"
    jl.write_text("\n".join(json.dumps(x) for x in rows) + "\n")
    return jl, data, rows


def test_release_batch_file_grid_mse_and_resume(dirs, tmp_path):
    from lvm.cli import main

    jl, data, rows = _release_batch_files(tmp_path)
    outs = tmp_path / "outs"
    args = ["prompt", "--model", str(dirs["model"]), "--tokenizer", str(dirs["tok"]), "--precision", "fp32",
            "--device", "cpu", "--no-display", "--batch", str(jl), "--input-base-dir", str(data),
            "--output-base-dir", str(outs), "--n", "2", "--candidates", "2", "--include-input",
            "--evaluate-mse", "--context", "2", "--out", str(tmp_path / "log")]
    lines = []
    import lvm.prompt.batch as batch

    real = batch.run_batch
    batch.run_batch = lambda *a, **k: real(*a, **{**k, "print_fn": lines.append, "progress": False})
    try:
        assert main(args) == 0
        mses = []
        for row in rows:
            grid = np.asarray(Image.open(outs / row["output"]), np.float32) / 255
            assert grid.shape == (2 * 32, (3 + 2) * 32, 3)  # rows = candidates, columns = 3 inputs + 2 new
            cells = grid.reshape(2, 32, 5, 32, 3).transpose(0, 2, 1, 3, 4)
            gen = cells[:, 3:]
            tgt = np.stack([np.asarray(Image.open(data / t), np.float32) / 255 for t in row["target"]])
            mses.append(np.mean((gen - tgt[None]) ** 2) * 3)  # the release: mean over (n, s, h, w, c) x channels
            # the input columns are the inputs as the tokenizer sees them (32 px squares)
            assert np.abs(cells[0, 0] - np.asarray(Image.open(data / row["input"][0]), np.float32) / 255).max() < 1e-6
        got = float(lines[-1].split("MSE ")[1].split()[0])
        assert "2 generated, 0 already done, 0 skipped" in lines[-1]
        # the PNG holds the float frames rounded to 1/255: the only difference from the printed figure
        assert got == pytest.approx(float(np.mean(mses)), rel=2e-3)
        first = (outs / rows[0]["output"]).read_bytes()
        (outs / rows[1]["output"]).unlink()
        assert main(args) == 0  # resumed: line 1 is kept, line 2 generated again
        assert "1 generated, 1 already done" in lines[-1]
        assert (outs / rows[0]["output"]).read_bytes() == first
        # --resize-output original: each cell the size of the line's last input (48 x 40)
        assert main(args[:-2] + ["--out", str(tmp_path / "log2"), "--resize-output", "original",
                                 "--output-base-dir", str(tmp_path / "outs2")]) == 0
        assert Image.open(tmp_path / "outs2" / rows[0]["output"]).size == (5 * 48, 2 * 40)
    finally:
        batch.run_batch = real
    print(f"batch: grid {grid.shape[1]}x{grid.shape[0]} px (5 columns x 2 candidate rows), MSE printed {got:.6f}, "
          f"independent {np.mean(mses):.6f}")
