"""What the web app does, without the web: one prompting Session (lvm/prompt/session.py, the engine and
prompt code `lvm prompt` runs) behind a lock, so one generation runs at a time and two browser tabs never
share a KV cache mid-generation.

    svc = PromptService(Session(model_dir, tokenizer_dir), work_dir)
    res = svc.generate(["a.png", "b.png"], "sequential", n=1, candidates=2, seed=0)
    res.candidates  # [[PIL image per new image] per candidate]; res.grid, res.zip: files to download

Uploaded files are checked with the project's image loader (a bad file is an InputError naming it), copied
into the service's own folder, and counted and sized against limits. The only server files the page can
ask for are the example prompts in `prompts/` and what the service itself wrote (uploads, results).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from lvm.prompt.prompts import Prompt, load_prompt
from lvm.prompt.session import Session
from lvm.tokens import IMAGES_PER_CONTEXT
from tokenizer.common.errors import InputError

MAX_IMAGES_PER_PROMPT = IMAGES_PER_CONTEXT  # a visual sequence holds at most this many images
MAX_CANDIDATES = 8
MAX_UPLOAD_MB = 20


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


class PromptService:
    def __init__(self, session: Session, work_dir: Path, examples_dir: Path | None = None,
                 names: tuple[str, str] = ("", "")):
        self.s = session
        self.names = names  # (model, tokenizer) as given: directories or hub ids
        self.work = Path(work_dir)
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
    def accept_uploads(self, files: list) -> list[Path]:
        """Uploaded files, each checked as an image and copied into the service's uploads folder."""
        from tokenizer.image_io import load_image

        # str / Path from the page and the API; older Gradio hands tempfile wrappers with the path in .name
        files = [Path(f) if isinstance(f, (str, os.PathLike)) else Path(f.name) for f in files or []]
        if len(files) > MAX_IMAGES_PER_PROMPT:
            raise InputError(f"at most {MAX_IMAGES_PER_PROMPT} images per prompt, got {len(files)}")
        out = []
        for f in files:
            if f.stat().st_size > MAX_UPLOAD_MB * 2**20:
                raise InputError(f"{f.name}: larger than {MAX_UPLOAD_MB} MB")
            load_image(f)  # an ImageLoadError names the file and what is wrong
            dst = self.work / "uploads" / uuid.uuid4().hex[:12] / f.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dst)
            out.append(dst)
        return out

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

    def generate(self, paths: list, mode: str, n: int = 1, candidates: int = 1, temperature: float = 1.0,
                 top_k: int = 50, top_p: float = 1.0, seed: int = 0, progress=None, owner: str | None = None) -> Result:
        """Generate for the prompt `paths` (checked images); waits while another generation runs.
        `progress(image index, n, tokens done, tokens per image, tokens/s)` is called as tokens come."""
        from lvm.generate.sampling import Sampling

        prompt = prompt_from([Path(p) for p in paths], mode)
        if not 1 <= int(n) <= MAX_IMAGES_PER_PROMPT or not 1 <= int(candidates) <= MAX_CANDIDATES:
            raise InputError(f"new images must be 1..{MAX_IMAGES_PER_PROMPT} and candidates 1..{MAX_CANDIDATES}")
        sampling = Sampling(temperature=float(temperature), top_k=int(top_k), top_p=float(top_p), seed=int(seed))
        tpi = self.s.engine.layout.tokens_per_image
        with self._lock:  # one generation at a time on the one engine
            self.owner = owner
            self._stop.clear()

            def on_token(j, t, tps):
                if self._stop.is_set():
                    raise Stopped()
                if progress:
                    progress(j, int(n), t, tpi, tps)

            try:
                self.s.prompt, self.s.sampling, self.s.candidates = prompt, sampling, int(candidates)
                run = self.work / "runs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
                res = self.s.generate(int(n), out_dir=run / "generation", on_progress=on_token)
                self.s.save(run / "prompt")
            finally:
                self.owner = None
        archive = shutil.make_archive(str(run / "prompt"), "zip", run / "prompt")
        return Result(res["images"], Path(res["grid"]), run / "prompt", Path(archive), res["info"])
