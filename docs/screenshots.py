"""Regenerate the `lvm serve` screenshots in docs/ (serve-before.png, serve-after.png) with the demo's model.

    python docs/screenshots.py [--model runs/demo/model --tokenizer runs/demo/tokenizer --example rotation]

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
    from lvm.checkpoints import demo_checkpoints
    from lvm.serve.app import launch, make_service
    from test_serve import _browser, _css, _free_port, _wait, generate, load_example

    model, tok = demo_checkpoints()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(model))
    ap.add_argument("--tokenizer", default=str(tok))
    ap.add_argument("--example", default="rotation")
    args = ap.parse_args()
    svc = make_service(args.model, args.tokenizer, "auto", "auto", "out/serve", ROOT / "prompts")
    app = launch(svc, port=_free_port(), block=False)
    b = _browser()
    try:
        b.get(app.local_url)
        load_example(b, args.example)
        shot(b, ROOT / "docs" / "serve-before.png")
        generate(b, 2)  # the page's default: 2 candidates
        _wait(b, lambda d: _css(d, "#grid img") or None)
        shot(b, ROOT / "docs" / "serve-after.png")
    finally:
        b.quit()
        app.close()
    print("wrote docs/serve-before.png, docs/serve-after.png")


if __name__ == "__main__":
    main()
