"""Regenerate the `lvm serve` screenshots in docs/ (serve-before.png, serve-after.png) with the model `lvm serve`
uses by default (assets/lvm-small, else the demo's).

    python docs/screenshots.py [--model DIR --tokenizer DIR --example rotation]

Needs the serve extra and the system Chromium + chromedriver (apt-get install chromium chromium-driver).
The browser steps are the ones tests/test_serve.py checks.
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def shot(browser, path):
    """A screenshot of the whole page (the window grown to its height)."""
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1400, height + 40)
    browser.save_screenshot(str(path))


def main():
    from lvm.checkpoints import resolve_pair
    from lvm.serve.app import launch, make_service
    from test_serve import _browser, _css, _free_port, _wait, generate, load_example

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="default: assets/lvm-small, else the demo's model")
    ap.add_argument("--tokenizer", default=None, help="default: the one the model records")
    ap.add_argument("--example", default="rotation", help="a prompt of prompts/ (its file name without .yaml)")
    ap.add_argument("--out", default=str(ROOT / "docs"), help="folder of the two pictures")
    args = ap.parse_args()
    model, tok = resolve_pair(args.model, args.tokenizer)
    Path(args.out).mkdir(parents=True, exist_ok=True)  # Chrome's save_screenshot returns False into a missing folder
    svc = make_service(str(model), str(tok), "auto", "auto", "out/serve", ROOT / "prompts")
    app = launch(svc, port=_free_port(), block=False)
    b = _browser()
    try:
        b.get(app.local_url)
        load_example(b, args.example)
        shot(b, Path(args.out) / "serve-before.png")
        generate(b, 2)  # the page's default: 2 candidates
        _wait(b, lambda d: _css(d, "#grid img") or None)
        shot(b, Path(args.out) / "serve-after.png")
    finally:
        b.quit()
        app.close()
    print(f"wrote {args.out}/serve-before.png, serve-after.png")


if __name__ == "__main__":
    main()
