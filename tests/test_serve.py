"""`lvm serve`: the API (images in, candidates out, same seed same images, two clients at once) and the page
in a real headless browser (the system's Chromium driven by Selenium; skipped, saying why, where it is not
installed)."""

import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

gr = pytest.importorskip("gradio", reason="the serve extra (gradio) is not installed")

from lvm.model import ModelConfig  # noqa: E402
from tiny import save_tiny_tokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RES = 32  # the tiny tokenizer's resolution


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(url, service) of a page on a tiny model + tokenizer, the repo's prompts/ as its examples."""
    from lvm.serve.app import launch, make_service

    root = tmp_path_factory.mktemp("serve")
    torch.manual_seed(0)
    ModelConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, codebook_size=64,
                max_position_embeddings=256 * 8).build().save_pretrained(root / "lm")
    save_tiny_tokenizer(root / "tok", 64)
    svc = make_service(str(root / "lm"), str(root / "tok"), "cpu", "fp32", root / "work", ROOT / "prompts")
    app = launch(svc, port=_free_port(), block=False)
    yield app.local_url, svc
    app.close()


def _client(url):
    from gradio_client import Client

    return Client(url, verbose=False)


def _generate(url, seed, n_images=3, candidates=2):
    from gradio_client import handle_file

    frames = sorted((ROOT / "prompts" / "video").glob("*.png"))[:n_images]
    gallery, grid = _client(url).predict([handle_file(str(p)) for p in frames], "sequential", 1, candidates, 1.0, 50,
                                         1.0, seed, api_name="/generate")
    return [np.asarray(Image.open(item["image"]).convert("RGB")) for item in gallery], grid


def test_api_three_images_two_candidates_same_seed_same_images(server):
    url, _ = server
    a, grid = _generate(url, seed=3)
    b, _ = _generate(url, seed=3)
    c, _ = _generate(url, seed=4)
    assert len(a) == 2 and all(im.shape == (RES, RES, 3) for im in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))  # same seed: the same images
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    assert Image.open(grid).size[0] > 4 * RES  # the labeled grid: prompt | candidates


def test_two_clients_at_once_both_served_one_after_the_other(server, monkeypatch):
    url, svc = server
    spans, real = [], svc.s.generate

    def timed(*a, **k):
        t0 = time.perf_counter()
        out = real(*a, **k)
        spans.append((t0, time.perf_counter()))
        return out

    monkeypatch.setattr(svc.s, "generate", timed)
    alone, _ = _generate(url, seed=11)
    results, errors = {}, []

    def call(seed):
        try:
            results[seed] = _generate(url, seed)[0]
        except Exception as e:  # surfaced by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=call, args=(s,)) for s in (11, 12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and set(results) == {11, 12}
    assert all(np.array_equal(x, y) for x, y in zip(results[11], alone))  # not disturbed by the other client
    (a0, a1), (b0, b1) = sorted(spans[-2:])
    assert a1 <= b0  # the second generation started after the first ended


def test_bad_input_is_a_message_and_the_service_goes_on(server, tmp_path):
    from lvm.serve.service import prompt_from
    from lvm_base.errors import InputError

    _, svc = server
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(InputError, match="notes.txt"):
        svc.accept_uploads([tmp_path / "notes.txt"])
    with pytest.raises(InputError, match="odd number"):
        prompt_from([tmp_path / "a.png", tmp_path / "b.png"], "analogy")
    with pytest.raises(InputError, match="unknown example"):
        svc.load_example("../../etc/passwd")  # only the example prompts are offered
    assert set(svc.examples) >= {"video", "rotation"}


def test_only_the_example_prompts_and_results_are_served(server):
    import urllib.error
    import urllib.request

    url, _ = server

    def status(path):
        try:
            return urllib.request.urlopen(f"{url.rstrip('/')}/gradio_api/file={path}").status
        except urllib.error.HTTPError as e:
            return e.code

    assert status(ROOT / "prompts" / "video" / "00.png") == 200
    assert status(ROOT / "README.md") == 403 and status("/etc/passwd") == 403


# ---- the page in a real browser ----

def _browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("no system Chromium + chromedriver (apt-get install chromium chromium-driver): the browser "
                    "test cannot run here; the API tests above still do")
    pytest.importorskip("selenium", reason="selenium is not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1800"):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(driver), options=opts)


def _wait(browser, cond, timeout=90):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout, poll_frequency=0.25).until(lambda b: cond(b))


def _css(browser, sel):
    from selenium.webdriver.common.by import By

    return browser.find_elements(By.CSS_SELECTOR, sel)


def load_example(browser, name):
    from selenium.webdriver.common.keys import Keys

    box = _wait(browser, lambda b: (_css(b, "#example input") or [None])[0])
    box.click()
    box.send_keys(name)
    opt = _wait(browser, lambda b: [o for o in _css(b, "ul[role=listbox] li") if o.text.strip() == name] or None)[0]
    opt.click()
    box.send_keys(Keys.ESCAPE)
    _css(browser, "#load")[0].click()
    return _wait(browser, lambda b: _css(b, "#prompt img") or None)


def generate(browser, n_images):
    _css(browser, "#generate")[0].click()
    return _wait(browser, lambda b: (ims := [i for i in _css(b, "#candidates img")
                                             if b.execute_script("return arguments[0].naturalWidth", i) > 0])
                 and len(ims) >= n_images and ims)


@pytest.fixture
def browser():
    b = _browser()
    yield b
    b.quit()


def test_page_loads_an_example_and_generates_candidates(server, browser):
    url, _ = server
    browser.get(url)
    load_example(browser, "video")
    ims = generate(browser, 2)  # 2 candidates (the default) x 1 new image
    sizes = {tuple(browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", i))
             for i in ims}
    assert sizes == {(RES, RES)}  # the tokenizer's size
    assert "tokens/s" in _css(browser, "#status")[0].text
    assert _css(browser, "#grid img")
    loaded = _css(browser, "#loaded")[0].text  # which model, tokenizer, device and precision
    assert all(w in loaded for w in ("lm", "tok", "cpu", "fp32")), loaded


def test_page_non_image_upload_gives_a_message_and_the_server_goes_on(server, browser, tmp_path):
    url, _ = server
    browser.get(url)
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    upload = _wait(browser, lambda b: (_css(b, "#upload input[type=file]") or [None])[0])
    upload.send_keys(str(bad))
    msg = _wait(browser, lambda b: "could not add" in _css(b, "#message")[0].text and _css(b, "#message")[0].text)
    assert "notes.txt" in msg
    load_example(browser, "video")  # the page and the server still work
    assert generate(browser, 2)
