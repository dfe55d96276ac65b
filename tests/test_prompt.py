"""Prompt modes and prompt files, the shipped example prompts, terminal previews."""

import io
from pathlib import Path

import pytest
from PIL import Image

from lvm.prompt import display
from lvm.prompt.prompts import Prompt, load_prompt, save_prompt
from lvm_base.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ["rotation", "video", "segmentation", "depth", "colorization", "inpainting"]


def _imgs(d, n):
    out = []
    for i in range(n):
        p = d / f"i{i}.png"
        Image.new("RGB", (8, 8), (i * 30, 0, 0)).save(p)
        out.append(p)
    return out


def test_shipped_prompts_load():
    for name in SHIPPED:
        p = load_prompt(ROOT / "prompts" / f"{name}.yaml")
        assert p.images and p.target and all(q.is_file() for q in p.images + p.target)
        if name in ("rotation", "video"):
            assert p.mode == "sequential" and len(p.images) == 7 and p.labels[0] == "f1"
        else:
            assert p.mode == "analogy" and p.labels == ["A1", "A1'", "A2", "A2'", "A3", "A3'", "B"]
        assert Image.open(p.images[0]).size == (128, 128)


def test_example_prompts_are_reproducible(tmp_path):
    pytest.importorskip("pybullet")
    from lvm.prompt.examples import make_example_prompts

    made = make_example_prompts(tmp_path)
    assert sorted(p.stem for p in made) == sorted(SHIPPED)
    for name in ("rotation", "depth"):
        assert (tmp_path / f"{name}.yaml").read_text() == (ROOT / "prompts" / f"{name}.yaml").read_text()
        for png in sorted((ROOT / "prompts" / name).glob("*.png")):
            a, b = Image.open(png), Image.open(tmp_path / name / png.name)
            assert a.tobytes() == b.tobytes(), png


def test_roundtrip_and_modes(tmp_path):
    a, a2, b, c, t = _imgs(tmp_path, 5)
    p = Prompt()
    p.add_pair(a, a2)
    p.set_query(b)
    p.set_query(c)  # replaces the query
    p.target = [t]
    assert p.mode == "analogy" and p.images == [a, a2, c] and p.labels == ["A1", "A1'", "B"]
    sub = tmp_path / "sub"
    sub.mkdir()
    save_prompt(p, sub / "p.yaml")
    q = load_prompt(sub / "p.yaml")  # paths were written relative to sub/
    assert [x.resolve() for x in q.images] == [a, a2, c] and q.target[0].resolve() == t
    assert p.undo()[0] == "query" and p.images == [a, a2]
    with pytest.raises(InputError, match="query"):
        p.check()
    s = Prompt()
    s.add_frames([a, b])
    s.n_new = 3
    save_prompt(s, tmp_path / "s.yaml")
    assert load_prompt(tmp_path / "s.yaml").n_new == 3


def test_globs_and_bad_files(tmp_path):
    _imgs(tmp_path, 3)
    (tmp_path / "g.yaml").write_text("mode: sequential\nimages: 'i*.png'\n")
    assert [x.name for x in load_prompt(tmp_path / "g.yaml").images] == ["i0.png", "i1.png", "i2.png"]
    bad = {
        "mode: painting\nimages: [i0.png]\n": "mode must be",
        "mode: sequential\nimages: [nope.png]\n": "nope.png: no such file",
        "mode: sequential\nimages: 'z*.png'\n": "no files match",
        "mode: analogy\npairs: [[i0.png]]\nquery: i1.png\n": "\\[A, A'\\]",
        "mode: analogy\npairs: [[i0.png, i1.png]]\n": "needs 'query'",
        "mode: sequential\nimages: [i0.png]\ncolour: red\n": "unknown keys",
        "[1, 2": "not valid YAML",
    }
    for text, msg in bad.items():
        (tmp_path / "b.yaml").write_text(text)
        with pytest.raises(InputError, match=msg):
            load_prompt(tmp_path / "b.yaml")


def test_previews():
    img = Image.new("RGB", (16, 8), (255, 0, 0))
    img.paste((0, 0, 255), (0, 4, 16, 8))
    hb = display.half_blocks(img, width=8)
    lines = hb.strip("\n").split("\n")
    assert len(lines) == 2 and "\x1b[38;2;255;0;0m\x1b[48;2;255;0;0m\u2580" in lines[0]
    assert "\x1b[38;2;0;0;255m" in lines[1]
    k = display.kitty(img)
    assert k.startswith("\x1b_Ga=T,f=100,m=0;") and k.rstrip().endswith("\x1b\\")
    sx = display.sixel(img)
    assert sx.startswith("\x1bPq") and sx.rstrip().endswith("\x1b\\") and sx.count("-") >= 2
    assert display.detect({"TERM": "xterm-kitty"}) == "kitty"
    assert display.detect({"TERM": "xterm-256color"}) == "ansi"
    assert display.detect({"TERM": "foot"}) == "sixel"
    buf = io.StringIO()
    assert display.preview(img, "none", stream=buf) == "none" and buf.getvalue() == ""
