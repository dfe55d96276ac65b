"""Hostile but fair use of `lvm serve` from a browser-less client on 127.0.0.1: a PNG with a script appended
uploaded as `evil.html`, a small PNG that claims 13000 x 13000 pixels, a flood of uploads against the disk
cap, and settings no page would send ("abc" as the seed). The real server runs in this process on a tiny
model and tokenizer (as tests/test_serve.py starts it), driven through Gradio's client and plain HTTP; one
case runs `lvm serve` as a subprocess to stop it with SIGTERM.
"""

from __future__ import annotations

import io
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

gr = pytest.importorskip("gradio", reason="the serve extra (gradio) is not installed")

from tiny import save_tiny_tokenizer  # noqa: E402

from lvm.model import ModelConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CAP_MB = 1  # small, so that twenty 100 KB uploads must push the oldest out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tiny_pair(root: Path) -> tuple[Path, Path]:
    torch.manual_seed(0)
    ModelConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, codebook_size=64,
                max_position_embeddings=256 * 8).build().save_pretrained(root / "lm")
    save_tiny_tokenizer(root / "tok", 64)
    return root / "lm", root / "tok"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(url, service) of a page on a tiny model + tokenizer with a 1 MB disk cap."""
    from lvm.serve.app import launch, make_service

    root = tmp_path_factory.mktemp("serve_hostile")
    lm, tok = _tiny_pair(root)
    svc = make_service(str(lm), str(tok), "cpu", "fp32", root / "work", ROOT / "prompts", max_disk_mb=CAP_MB)
    app = launch(svc, port=_free_port(), block=False)
    yield app.local_url, svc
    app.close()
    svc.close()


def _png(size=40, seed=None) -> bytes:
    """A PNG: solid red, or noise (which PNG cannot compress: about 3 bytes a pixel) with a seed."""
    img = (Image.new("RGB", (size, size), (200, 10, 10)) if seed is None else
           Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _huge_png(path: Path, side: int = 13000) -> Path:
    """A valid all-black 1-bit PNG of side x side pixels: about 20 KB on disk, 500 MB as RGB once decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z, row = zlib.compressobj(9), b"\0" * (1 + (side + 7) // 8)  # filter byte + packed bits
    idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def _predict(url, files, seed=0, **settings):
    from gradio_client import Client, handle_file

    s = dict(n=1, candidates=1, temperature=1.0, top_k=50, top_p=1.0, seed=seed) | settings
    return Client(url, verbose=False).predict([handle_file(str(f)) for f in files], "sequential", s["n"],
                                              s["candidates"], s["temperature"], s["top_k"], s["top_p"], s["seed"],
                                              api_name="/generate")


def _refused(url, files, **settings) -> str:
    """The one-line message of a /generate call that must fail."""
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as e:
        _predict(url, files, **settings)
    return str(e.value)


def _fetch(url, path) -> tuple[int, str, str]:
    """(status, content-type, content-disposition) of the server's file route for `path`."""
    try:
        r = urllib.request.urlopen(f"{url.rstrip('/')}/gradio_api/file={path}")
        return r.status, r.headers.get("content-type", ""), r.headers.get("content-disposition", "")
    except urllib.error.HTTPError as e:
        return e.code, "", ""


def _du(folder: Path) -> int:
    return sum(f.lstat().st_size for f in folder.rglob("*") if f.is_file())


def _one_line_without_paths(msg: str, svc) -> None:
    assert "\n" not in msg.strip() and "Traceback" not in msg, msg
    assert str(svc.work.resolve()) not in msg and not re.search(r"(^|[\s'\"(])/\w", msg), msg  # no server path


# ---- item 1: stored XSS ----

def test_evil_html_upload_is_never_served_back_as_html(server, tmp_path):
    url, svc = server
    evil = tmp_path / "evil.html"
    evil.write_bytes(_png() + b"<script>alert(1)</script>")
    gallery, _ = _predict(url, [evil, ROOT / "prompts" / "video" / "00.png"])
    assert len(gallery) == 1  # accepted as the image it is
    served = {f: _fetch(url, f) for f in svc.work.rglob("*") if f.is_file()}
    assert any(status == 200 for status, _, _ in served.values())
    for f, (status, ctype, disposition) in served.items():
        if status == 200 and not disposition.startswith("attachment"):
            assert not re.search(r"html|javascript|xml|svg|text/", ctype), (f, ctype, disposition)
    stored = [f for f in svc.store.uploads.rglob("*") if f.is_file()]
    assert stored and all(f.suffix == ".png" and b"<script" not in f.read_bytes() for f in stored)
    for f in svc.store.runs.rglob("*"):  # the run's copies, prompt.yaml, generation.json: none of the client's
        assert f.suffix != ".html" and (f.is_dir() or f.suffix == ".zip" or b"<script" not in f.read_bytes()), f
        assert "evil" not in f.name and (f.suffix not in (".json", ".yaml") or "evil" not in f.read_text()), f
    raw = [f for f in svc.store.cache.rglob("evil.html")]  # Gradio's raw copy of the upload: a download only
    assert all(_fetch(url, f)[2].startswith("attachment") for f in raw)


# ---- item 5: resource limits ----

def test_13000px_png_is_refused_from_its_header_without_decoding(server, tmp_path, monkeypatch):
    import lvm_base.image_io as image_io
    from lvm_base.errors import ImageLoadError

    url, svc = server
    huge = _huge_png(tmp_path / "huge.png")
    assert huge.stat().st_size < 100_000
    decoded, real = [], image_io.load_image

    def spy(path):
        decoded.append(Path(path).name)
        if Path(path).name == "huge.png":  # stands in for the 15 s, 1.25 GB decode the guard must spare
            raise ImageLoadError(path, "decoded")
        return real(path)

    monkeypatch.setattr(image_io, "load_image", spy)
    msg = _refused(url, [huge])
    assert "huge.png" in msg and "13000x13000" in msg and "limit" in msg and "huge.png" not in decoded, msg
    _one_line_without_paths(msg, svc)
    t0 = time.perf_counter()
    with pytest.raises(ImageLoadError, match="13000x13000"):
        image_io.check_pixels(huge)
    assert time.perf_counter() - t0 < 1  # the header only: decoding took 15 s and 1.25 GB
    ok = tmp_path / "ok.png"
    ok.write_bytes(_png())
    assert svc.accept_uploads([ok]) and decoded == ["ok.png"]  # the spy sits on the path an upload takes


def _post_upload(url, name: str, data: bytes):
    import httpx

    return httpx.post(f"{url.rstrip('/')}/gradio_api/upload", files=[("files", (name, data, "image/png"))],
                      timeout=60)


def test_disk_use_stays_under_the_cap_after_20_uploads(server, tmp_path):
    url, svc = server
    cap = CAP_MB * 2**20
    for i in range(20):  # 20 x ~120 KB = 2.4 MB through Gradio's upload route, against a 1 MB cap
        r = _post_upload(url, f"noise{i}.png", _png(200, seed=i))
        assert r.status_code == 200, r.text
        assert _du(svc.work) <= cap, (i, _du(svc.work))
    r = _post_upload(url, "big.png", _png(620, seed=99))  # ~1.1 MB: larger than the cap itself
    assert r.status_code == 413 and "disk cap" in r.text and "\n" not in r.text.strip(), r.text
    _one_line_without_paths(r.text, svc)
    for i in range(3):  # through the API too: re-encoded uploads, runs and Gradio's copies of the results
        f = tmp_path / f"frame{i}.png"
        f.write_bytes(_png(64, seed=100 + i))
        assert _predict(url, [f])[0]
        assert _du(svc.work) <= cap, (i, _du(svc.work))


def test_old_files_go_and_temporary_files_go_at_close(tmp_path):
    from lvm.serve.storage import MB, Storage

    store = Storage(tmp_path / "work", 10 * MB, max_age_s=24 * 3600)
    old_run, new_run = store.runs / "old" / "grid.png", store.runs / "new" / "grid.png"
    raw = store.cache / "abc" / "upload.png"  # a raw upload: the cache keeps it an hour at most
    mine = tmp_path / "mine.png"  # not the server's: never removed
    for f in (old_run, new_run, raw, mine, store.uploads / "a.png"):
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"x" * 1000)
    for f, age in ((old_run, 25 * 3600), (raw, 2 * 3600)):
        for p in (f, f.parent):
            os.utime(p, (time.time() - age,) * 2)
    store.prune(keep=[mine])
    assert not old_run.parent.exists() and not raw.parent.exists() and new_run.exists() and mine.exists()
    store.close()
    assert not store.uploads.exists() and not store.cache.exists() and new_run.exists() and mine.exists()


def test_lvm_serve_removes_its_temporary_files_when_stopped(tmp_path):
    lm, tok = _tiny_pair(tmp_path)
    work, port = tmp_path / "work", _free_port()
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "lvm.cli", "serve", "--model", str(lm), "--tokenizer", str(tok),
                             "--device", "cpu", "--precision", "fp32", "--port", str(port), "--out", str(work),
                             "--max-disk-mb", "5"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 300  # torch and gradio imports: seconds alone, minutes on a loaded machine
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=5).close()  # listening: the page is up
                break
            except OSError:
                assert proc.poll() is None and time.time() < deadline, (tmp_path / "serve.log").read_text()
                time.sleep(0.5)
        url = f"http://127.0.0.1:{port}/"
        assert _post_upload(url, "a.png", _png()).status_code == 200
        assert any((work / "cache").rglob("a.png"))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, (tmp_path / "serve.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    assert not (work / "cache").exists() and not (work / "uploads").exists()


# ---- item 9: errors a web client sees ----

def test_bad_settings_are_one_line_naming_the_field_and_log_no_traceback(server, capfd):
    url, svc = server
    frame = ROOT / "prompts" / "video" / "00.png"
    cases = [("seed", "abc"), ("seed", 1e30), ("seed", -1), ("seed", 99999999999999999999),
             ("temperature", "nan"), ("temperature", "inf"), ("n", 1000), ("candidates", 1000),
             ("top_k", -5), ("top_p", 0)]
    capfd.readouterr()
    for field, value in cases:
        msg = _refused(url, [frame], **{field: value})
        assert msg.startswith(f"{field} must be "), (field, value, msg)
        _one_line_without_paths(msg, svc)
    assert _predict(url, [frame], seed="7")[0]  # a number's text is fine, and the server goes on
    err = capfd.readouterr().err
    assert "Traceback" not in err, err[-3000:]


def test_web_errors_name_the_upload_not_server_paths(server, tmp_path):
    url, svc = server
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    msg = _refused(url, [notes])
    assert msg.startswith("notes.txt: cannot read image"), msg
    _one_line_without_paths(msg, svc)


def test_bad_serve_options_are_one_line_errors_before_a_model_loads(tmp_path, capsys):
    from cli_util import cli

    cases = [(["--max-disk-mb", "0"], "--max-disk-mb"), (["--max-disk-mb", "nan"], "--max-disk-mb"),
             (["--max-age-hours", "-1"], "--max-age-hours"),
             (["--out", str(tmp_path / "ex" / "out"), "--examples", str(tmp_path / "ex")], "inside --examples")]
    missing = ["--model", str(tmp_path / "no-model"), "--tokenizer", str(tmp_path / "no-tok")]
    for args, needle in cases:  # the checks come first: the missing model is never reached
        rc, _, err = cli(capsys, "serve", *missing, "--port", _free_port(), *args)  # argparse's refusals exit 2
        assert rc == 2, args
        err = err.strip()
        assert err.startswith("error: ") and needle in err and "\n" not in err, (args, err)
