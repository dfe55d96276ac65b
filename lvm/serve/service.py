"""What the web app does, without the web: one prompting Session (lvm/prompt/session.py, the engine and
prompt code `lvm prompt` runs) behind a lock, so one generation runs at a time and two browser tabs never
share a KV cache mid-generation.

    svc = PromptService(Session(model_dir, tokenizer_dir), work_dir)
    res = svc.generate(["a.png", "b.png"], "sequential", n=1, candidates=2, seed=0)
    res.candidates  # [[PIL image per new image] per candidate]; res.grid, res.zip: files to download

Uploads are strangers' files: each is sized, its pixel count read from the header (a huge image is refused
before decoding), decoded by the project's image loader and re-encoded as a PNG under a name the server
picks, so no byte, name or type of the client's file is kept or served back. Settings arrive as a web client
sends them (numbers or text) and are checked here, naming the field. Everything the service writes lives in
a `Storage` (storage.py) that caps its bytes and age.
"""

from __future__ import annotations

import io
import math
import re
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from lvm.generate.sampling import DEFAULTS
from lvm.prompt.prompts import Prompt, load_prompt
from lvm.prompt.session import Session
from lvm.serve.storage import MB, Storage
from lvm.tokens import IMAGES_PER_CONTEXT
from lvm_base.errors import ImageLoadError, InputError, one_line
from lvm_base.files import atomic_write_bytes

MAX_IMAGES_PER_PROMPT = IMAGES_PER_CONTEXT  # a visual sequence holds at most this many images
MAX_NEW_IMAGES = IMAGES_PER_CONTEXT
MAX_CANDIDATES = 8
MAX_UPLOAD_MB = 20
MAX_TEMPERATURE = 10.0  # far flatter than any useful sampling; a bound keeps the value finite
MAX_TOP_K = 65536
MAX_SEED = 2**32 - 1  # numpy's seeding takes 0 .. 2**32 - 1; torch's takes more

class Stopped(Exception):
    """The Stop button ended a generation."""


@dataclass
class Result:
    candidates: list      # [[PIL image per new image] per candidate]
    grid: Path            # the labeled grid `lvm prompt` writes
    folder: Path          # prompt.yaml + images + candidates + grid + generation.json (the REPL's /save)
    zip: Path             # `folder` as one download
    info: dict            # generation.json


def example_prompts(root: Path) -> dict[str, Path]:
    """name -> prompt file of every prompts/*.yaml."""
    return {p.stem: p for p in sorted(Path(root).glob("*.yaml"))}


def prompt_from(paths: list, mode: str) -> Prompt:
    """A Prompt of image paths in order: frames (sequential), or A1 A1' ... B (analogy: pairs, then the query)."""
    p = Prompt(mode=mode)
    if mode == "sequential":
        p.add_frames(paths)
    elif mode == "analogy":
        if len(paths) % 2 == 0:
            raise InputError(f"an analogy prompt is pairs A A' and then one query B: an odd number of images, "
                             f"got {len(paths)}")
        for a, b in zip(paths[:-1:2], paths[1:-1:2]):
            p.add_pair(a, b)
        p.set_query(paths[-1])
    else:
        raise InputError(f"mode must be sequential or analogy, got {mode!r}")
    p.check()
    return p


def short(v) -> str:
    """repr(v), cut to 40 characters: a client's value in a message."""
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _number(field: str, v, lo, hi, whole: bool, open_lo: bool = False):
    """`v` (a number, or its text) checked against lo..hi; an InputError naming `field` otherwise."""
    x = v
    if isinstance(x, str):
        t = x.strip()
        try:
            x = int(t) if t.lstrip("+-").isdigit() else float(t)
        except ValueError:
            x = None
    ok = isinstance(x, int) and not isinstance(x, bool) or isinstance(x, float) and math.isfinite(x)
    if ok and whole and isinstance(x, float):
        ok, x = x.is_integer(), int(x) if x.is_integer() else x
    if ok:
        ok = (x > lo if open_lo else x >= lo) and x <= hi
    if not ok:
        kind = f"an integer {lo}..{hi}" if whole else f"a number in {'(' if open_lo else '['}{lo}, {hi}]"
        raise InputError(f"{field} must be {kind}, got {short(v)}")
    return x


def check_settings(n, candidates, temperature, top_k, top_p, seed) -> dict:
    """The settings of a generation as a client sends them, checked and typed; the first bad one is an
    InputError naming the field (as the API names it) and its range."""
    return {"n": _number("n", n, 1, MAX_NEW_IMAGES, True),
            "candidates": _number("candidates", candidates, 1, MAX_CANDIDATES, True),
            "temperature": float(_number("temperature", temperature, 0, MAX_TEMPERATURE, False)),
            "top_k": _number("top_k", top_k, 0, MAX_TOP_K, True),
            "top_p": float(_number("top_p", top_p, 0, 1, False, open_lo=True)),
            "seed": _number("seed", seed, 0, MAX_SEED, True)}


# An absolute path in a message: the folders go, the file's name stays (it is the client's own name, or one
# the server picked). Not after a word character, so "1/2" or "A/B" are left alone.
_SERVER_PATH = re.compile(r"(?<![\w.~-])(?:/[^\s/'\"]+)*/([^\s/'\":,)]+)")


def public_message(e: BaseException) -> str:
    """`e` as one line fit for a web client: no server folders in it."""
    return _SERVER_PATH.sub(lambda m: m.group(1), one_line(e))


def _upload(f) -> tuple[Path, str]:
    """(path, name to show) of one upload as Gradio hands it: a path, or a file-data dict (events that skip
    Gradio's preprocessing)."""
    if isinstance(f, dict):
        path = Path(str(f.get("path") or ""))
        return path, Path(str(f.get("orig_name") or path.name)).name
    path = Path(f)
    return path, path.name


class PromptService:
    def __init__(self, session: Session, work_dir: Path, examples_dir: Path | None = None,
                 names: tuple[str, str] = ("", ""), max_disk_mb: float = 500, max_age_h: float = 24,
                 max_pixels: int | None = None):
        from lvm_base.image_io import MAX_PIXELS

        self.s = session
        self.names = names  # (model, tokenizer) as given: directories or hub ids
        self.work = Path(work_dir)
        self.store = Storage(self.work, float(max_disk_mb) * MB, float(max_age_h) * 3600)
        self.max_pixels = max_pixels or MAX_PIXELS
        self.examples_dir = Path(examples_dir or "prompts")
        self.examples = example_prompts(self.examples_dir) if self.examples_dir.is_dir() else {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.owner: str | None = None  # who runs the current generation (a browser session id)

    def describe(self) -> str:
        """Which model, tokenizer, device and precision are loaded (markdown)."""
        e, t = self.s.engine, self.s.tok
        model, tok = (f"`{n}` " if n else "" for n in self.names)
        return (f"**model** {model}vocab {e.vocab_size} (codebook {e.layout.codebook_size}), {len(e.layers)} layers, "
                f"context {e.context_images} images · **tokenizer** {tok}{t.codebook_size} codes, {t.resolution} px · "
                f"**device** {e.plan.device} · **precision** {e.plan.precision} · {e.describe()}")

    # ---- inputs ----
    def accept_uploads(self, files: list, room: int | None = None) -> list[Path]:
        """Uploaded files as PNGs of the service's own, in order (see the module's docstring). More than the
        per-prompt limit is an error; where `room` is given, the first `room` files are taken instead."""
        items = [_upload(f) for f in files or []]
        out: list[Path] = []
        try:
            if room is None and len(items) > MAX_IMAGES_PER_PROMPT:
                raise InputError(f"at most {MAX_IMAGES_PER_PROMPT} images per prompt, got {len(items)}")
            for path, name in items[:room]:
                data = self._encode(path, name)
                self.store.make_room(len(data), keep=[*out, *(p for p, _ in items)], what=name)
                dst = self.store.uploads / f"{uuid.uuid4().hex}.png"
                atomic_write_bytes(dst, data)
                out.append(dst)
            return out
        except BaseException:
            for p in out:
                p.unlink(missing_ok=True)
            raise

    def _encode(self, path: Path, name: str) -> bytes:
        """The upload at `path` (shown as `name`) re-encoded as PNG bytes, after the checks that cost no
        decoding: its size, then its pixel count."""
        from lvm_base.image_io import check_pixels, load_image

        try:
            if path.is_file() and path.stat().st_size > MAX_UPLOAD_MB * MB:
                raise InputError(f"{name}: larger than {MAX_UPLOAD_MB} MB")
            check_pixels(path, self.max_pixels)
            img = load_image(path)
        except ImageLoadError as e:
            raise InputError(f"{name}: {e.reason}") from None
        buf = io.BytesIO()
        img.save(buf, format="PNG", compress_level=1)  # fast: a generation waits behind it
        return buf.getvalue()

    def load_example(self, name: str) -> tuple[str, list[Path], int]:
        """(mode, image paths, new images) of the example prompt `name`."""
        if name not in self.examples:
            raise InputError(f"unknown example prompt {name!r}; known: {', '.join(self.examples) or 'none'}")
        p = load_prompt(self.examples[name])
        return p.mode, p.images, p.n_new if p.mode == "sequential" else 1

    # ---- work ----
    def stop(self, owner: str | None = None) -> bool:
        """Ask the running generation to stop (only its own owner's, when one is given)."""
        if self.owner is not None and (owner is None or owner == self.owner):
            self._stop.set()
            return True
        return False

    def generate(self, paths: list, mode: str, n: int = DEFAULTS.n, candidates: int = DEFAULTS.candidates,
                 temperature: float = DEFAULTS.temperature, top_k: int = DEFAULTS.top_k, top_p: float = DEFAULTS.top_p,
                 seed: int = DEFAULTS.seed, progress=None, owner: str | None = None) -> Result:
        """Generate for the prompt `paths` (checked images); waits while another generation runs.
        `progress(image index, n, tokens done, tokens per image, tokens/s)` is called as tokens come."""
        from lvm.generate.sampling import Sampling

        o = check_settings(n, candidates, temperature, top_k, top_p, seed)
        n, candidates = o["n"], o["candidates"]
        paths = [Path(p) for p in paths]
        if not all(p.is_file() for p in paths):
            raise InputError("an image of this prompt is no longer on the server (its disk cap or age limit "
                             "removed it): add it again")
        prompt = prompt_from(paths, mode)
        sampling = Sampling(temperature=o["temperature"], top_k=o["top_k"], top_p=o["top_p"], seed=o["seed"])
        # what a run writes, at most: prompt copies and new images (each twice: files and zip) and the grid
        cell = 3 * self.s.tok.resolution ** 2
        need = cell * (2 * len(paths) + 2 * n * candidates + (len(paths) + n) * (candidates + 1))
        tpi = self.s.engine.layout.tokens_per_image
        with self._lock:  # one generation at a time on the one engine
            self.owner = owner
            self._stop.clear()

            def on_token(j, t, tps):
                if self._stop.is_set():
                    raise Stopped()
                if progress:
                    progress(j, n, t, tpi, tps)

            try:
                self.store.make_room(need, keep=paths, what="this generation")
                self.s.prompt, self.s.sampling, self.s.candidates = prompt, sampling, candidates
                run = self.store.runs / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
                res = self.s.generate(n, out_dir=run / "generation", on_progress=on_token)
                self.s.save(run / "prompt")
            finally:
                self.owner = None
        archive = shutil.make_archive(str(run / "prompt"), "zip", run / "prompt")
        self.store.prune(keep=[run, *paths])
        return Result(res["images"], Path(res["grid"]), run / "prompt", Path(archive), res["info"])

    def close(self) -> None:
        """At shutdown: the temporary files (uploads, the web cache) go."""
        self.store.close()
