"""`lvm tokenizer encode` / `decode`: folders of images <-> .npy code files, bad inputs skipped and named."""

import numpy as np
import torch
from PIL import Image

from lvm.cli import main
from tokenizer import VQGAN, VQGANConfig, load_tokenizer


def _tokenizer(path):
    torch.manual_seed(0)
    VQGAN(VQGANConfig(resolution=32, hidden_channels=32, channel_mult=(1, 1), num_res_blocks=1,
                      attn_resolutions=(), mid_attention=False, z_channels=8, embed_dim=8,
                      codebook_size=64, precision="fp32")).save_pretrained(path)
    return path


def test_encode_then_decode_a_tree(tmp_path, capsys):
    tok = _tokenizer(tmp_path / "tok")
    src = tmp_path / "images"
    (src / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("a.png", "sub/b.png"):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(src / name)
    (src / "broken.png").write_bytes(b"not an image")
    assert main(["tokenizer", "encode", str(tok), str(src), "--out", str(tmp_path / "codes"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "encoded 2 images" in out and "1 skipped" in out and "broken.png" in out
    a = np.load(tmp_path / "codes" / "sub" / "b.npy", allow_pickle=False)
    assert a.shape == (256,) and a.dtype == np.int64 and 0 <= a.min() and a.max() < 64
    # the same batch as the command's (a.png and sub/b.png; the broken file drops out)
    expect = load_tokenizer(tok, device="cpu").encode_images([src / "a.png", src / "sub" / "b.png"])[1].numpy()
    assert np.array_equal(a, expect)
    # a rerun keeps what is there
    assert main(["tokenizer", "encode", str(tok), str(src), "--out", str(tmp_path / "codes"), "--device", "cpu"]) == 0
    assert "encoded 0 images" in capsys.readouterr().out

    np.save(tmp_path / "codes" / "two.npy", np.stack([a, a]))
    np.save(tmp_path / "codes" / "bad.npy", np.full(256, 64))  # 64 is not a code of a 64-code book
    assert main(["tokenizer", "decode", str(tok), str(tmp_path / "codes"), "--out", str(tmp_path / "png"),
                 "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "decoded 4 images" in out and "1 files skipped" in out and "bad.npy: codes outside [0, 63]" in out
    names = sorted(str(p.relative_to(tmp_path / "png")) for p in (tmp_path / "png").rglob("*.png"))
    assert names == ["a.png", "sub/b.png", "two_0.png", "two_1.png"]
    assert Image.open(tmp_path / "png" / "two_1.png").size == (32, 32)


def test_decode_of_nothing_is_a_one_line_error(tmp_path, capsys):
    tok = _tokenizer(tmp_path / "tok")
    (tmp_path / "empty").mkdir()
    assert main(["tokenizer", "decode", str(tok), str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "no .npy files" in capsys.readouterr().err
