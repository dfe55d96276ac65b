"""One prompting session: a model and a tokenizer, the visual prompt, the sampling settings, the results.

`Session` is the one prompting implementation: the REPL (lvm/prompt/repl.py) edits its prompt line by line,
the one-shot and batch modes (lvm/prompt/modes.py, lvm/prompt/batch.py) fill it from a file, and the demo's
prompts stage (lvm/demo/prompts.py) hands it the engine and tokenizer it has already loaded.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from lvm.checkpoints import check_fit, default_model, tokenizer_for
from lvm.prompt.prompts import Prompt, load_prompt, save_prompt
from lvm_base.errors import InputError


class Session:
    def __init__(self, model_dir=None, tokenizer_dir=None, out_dir="out/prompt", display: str | None = None,
                 engine=None, tokenizer=None, device: str = "auto", precision: str = "auto",
                 print_fn=print, progress: bool = True, speculative: bool = True):
        from lvm.generate.sampling import DEFAULTS, Sampling

        self.print = print_fn
        self.out_dir = Path(out_dir)
        self.display = display  # None = detect, "none" = off
        self.progress = progress  # the per-image token counter on stdout while generating
        self.prompt = Prompt()
        self.sampling = Sampling()
        self.candidates = DEFAULTS.candidates
        self.last: dict | None = None
        self._codes: dict = {}
        self._runs = 0
        if engine is None and model_dir is None:
            model_dir = default_model()
            self.print(f"using {model_dir} (--model chooses another)")
        self.engine = engine or self._load_model(model_dir, device, precision, speculative)
        if not speculative:  # plain decoding, one token per pass (an engine handed in included)
            self.engine.draft = 0
        # The tokenizer computes where the model does, under the same precision request; without one given,
        # the model's recorded tokenizer.
        self.tok = tokenizer or self._load_tokenizer(tokenizer_for(model_dir, tokenizer_dir),
                                                     self.engine.plan.device, precision)
        try:
            self.check_match()
        except InputError as e:
            self.print(f"warning: {e}; /gen will refuse until they match")

    # ---- loading ----
    def _load_model(self, model_dir, device, precision, speculative: bool = True):
        from lvm.generate.engine import Engine

        t = time.perf_counter()
        engine = Engine.from_pretrained(model_dir, device=device, precision=precision,
                                        speculative=None if speculative else False)
        self.print(f"model {model_dir}: vocab {engine.vocab_size} (codebook {engine.layout.codebook_size}), "
                   f"{len(engine.layers)} layers, context {engine.context_images} images, "
                   f"{engine.describe()} [{time.perf_counter() - t:.1f}s]")
        return engine

    def _load_tokenizer(self, tokenizer_dir, device, precision):
        from tokenizer import load_tokenizer

        tok = load_tokenizer(tokenizer_dir, device=device, precision=precision).eval()
        self.print(f"tokenizer {tokenizer_dir}: {tok.codebook_size} codes, {tok.resolution} px, "
                   f"pixels {tok.value_range}, resize {tok.resize_mode}")
        return tok

    def check_match(self):
        check_fit(self.engine.layout, self.tok)

    # ---- prompt images ----
    def check_images(self, paths):
        """`paths`, once each has been read as an image (an ImageLoadError names the first that is not one)."""
        from lvm_base.image_io import load_image

        for p in paths:
            load_image(p)
        return paths

    def encode(self, paths):
        """Codes (n, 256) of image files, cached by path + modification time."""
        import torch

        keys = [(str(Path(p).resolve()), Path(p).stat().st_mtime_ns) for p in paths]
        todo = [p for p, k in zip(paths, keys) if k not in self._codes]
        if todo:
            for p, c in zip(todo, self.tok.encode_images([str(p) for p in todo])):
                self._codes[(str(Path(p).resolve()), Path(p).stat().st_mtime_ns)] = c
        return torch.stack([self._codes[k] for k in keys])

    def load(self, path):
        """Make the prompt file `path` the prompt."""
        self.prompt = load_prompt(path)
        self.check_images(self.prompt.images + self.prompt.target)
        self.print(f"loaded {path}: {self.prompt.mode}, {len(self.prompt.images)} images"
                   + (f" ({self.prompt.description})" if self.prompt.description else ""))

    def default_n(self) -> int:
        """New images a generation makes unless told: the prompt's n, one for an analogy."""
        return self.prompt.n_new if self.prompt.mode == "sequential" else 1

    # ---- work ----
    def generate(self, n: int, out_dir: Path | None = None, write: bool = True, on_progress=None) -> dict:
        """Generate n images x candidates for the current prompt; write PNGs + grid; return what was written.
        `on_progress(image index, tokens done, tokens/s)` replaces the stdout counter (the web app's bar)."""
        from lvm_base.files import atomic_write_text
        from lvm_base.image_io import save_png

        self.prompt.check()
        self.check_match()
        paths = self.prompt.images
        codes = self.encode(paths)
        if len(paths) + n > self.engine.context_images:
            self.print(f"note: {len(paths)} prompt images + {n} new exceed the {self.engine.context_images}-image "
                       f"context: the model sees the last {self.engine.context_images - 1} images at each step")
        out = self.engine.generate(codes, n_new=n, candidates=self.candidates, sampling=self.sampling,
                                   progress=on_progress or (self._progress(n) if self.progress else None))
        for note in out.notes:
            self.print(f"note: {note}")
        flat = out.images.reshape(-1, self.engine.layout.tokens_per_image)
        images = self.tok.decode_to_pil(flat)
        per = [images[c * n:(c + 1) * n] for c in range(self.candidates)]
        if not write:
            return {"images": per, "generation": out}
        self._runs += 1
        out_dir = out_dir or self.out_dir / f"gen{self._runs:03d}"
        seeds = [self.sampling.seed + c for c in range(self.candidates)]
        files = []
        for c, imgs in enumerate(per):
            for j, im in enumerate(imgs):
                files.append(save_png(im, out_dir / f"candidate{c}_seed{seeds[c]}_img{j}.png"))
        grid = self.grid(per, n, [f"seed {s}" for s in seeds])
        grid_path = save_png(grid, out_dir / "grid.png")
        info = {"prompt": [str(p) for p in paths], "mode": self.prompt.mode, "n": n,
                "candidates": self.candidates, "sampling": vars(self.sampling), "seeds": seeds,
                "tokens_per_s": round(out.tokens_per_s, 2), "seconds": round(out.seconds, 2),
                "device": self.engine.plan.device, "precision": self.engine.plan.precision,
                "storage": self.engine.plan.storage or self.engine.plan.precision,
                "speculative": {"draft": out.draft, "passes_per_image": round(out.passes_per_image, 1),
                                "acceptance_length": round(out.acceptance_length, 2)},
                "dropped_images": out.dropped_images, "files": [str(f) for f in files]}
        atomic_write_text(out_dir / "generation.json", json.dumps(info, indent=2) + "\n")
        self.print(f"  {out.new_tokens} tokens in {out.seconds:.1f}s ({out.tokens_per_s:.1f} tokens/s)")
        self.last = {"dir": out_dir, "files": files, "grid": grid_path, "grid_image": grid, "info": info,
                     "images": per}
        return self.last

    def _progress(self, n: int):
        """The engine's progress callback: one overwritten stdout line per image, at most five a second."""
        tpi = self.engine.layout.tokens_per_image
        last = [0.0]

        def progress(j, t, tps):
            now = time.perf_counter()
            if t == tpi or now - last[0] > 0.2:
                last[0] = now
                sys.stdout.write(f"\r  image {j + 1}/{n}: tokens {t}/{tpi}, {tps:.1f} tokens/s ")
                sys.stdout.flush()
                if t == tpi:
                    sys.stdout.write("\n")

        return progress

    def grid(self, rows, n: int, labels: list[str]):
        """The labeled grid of a generation: the prompt (and the first n target images) on top, then one row
        per entry of `rows` (n generated images each) under the new-image columns."""
        from lvm_base.image_io import load_image, make_grid

        r = self.tok.resolution
        shown = [load_image(p).resize((r, r)) for p in self.prompt.images]
        target = [load_image(p).resize((r, r)) for p in self.prompt.target]
        k = len(shown)
        cells = [shown + target[:n]] + [[None] * k + list(imgs) for imgs in rows]
        head = "prompt" + (" + target" if target else "")
        return make_grid(cells, labels=[head] + list(labels),
                         col_labels=self.prompt.labels + [f"new {j + 1}" for j in range(n)])

    def save(self, d: Path):
        """prompt.yaml + copies of its images (so DIR is self-contained), and the last results if any."""
        import shutil

        from lvm_base.files import atomic_write_text
        from lvm_base.image_io import save_png

        if not self.prompt.images:
            raise InputError("nothing to save: the prompt is empty")
        d.mkdir(parents=True, exist_ok=True)
        copy = Prompt(mode=self.prompt.mode, n_new=self.prompt.n_new, description=self.prompt.description)
        for i, (kind, paths) in enumerate(self.prompt.groups):
            new = []
            for j, p in enumerate(paths):
                dst = d / "images" / f"{i:02d}_{j}_{p.name}"
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(p, dst)
                new.append(dst)
            copy.groups.append((kind, new))
        for i, p in enumerate(self.prompt.target):
            dst = d / "images" / f"target{i}_{p.name}"
            shutil.copyfile(p, dst)
            copy.target.append(dst)
        save_prompt(copy, d / "prompt.yaml")
        copies = {str(p): str(q.relative_to(d)) for (_, ps), (_, qs) in zip(self.prompt.groups, copy.groups)
                  for p, q in zip(ps, qs)}
        msg = f"saved {d / 'prompt.yaml'}"
        if self.last:
            for f in self.last["files"]:
                shutil.copyfile(f, d / Path(f).name)
            save_png(self.last["grid_image"], d / "grid.png")
            # The saved folder stands alone: its generation.json names the copies, not the session's files.
            info = dict(self.last["info"], files=[Path(f).name for f in self.last["files"]],
                        prompt=[copies.get(p, Path(p).name) for p in self.last["info"]["prompt"]])
            atomic_write_text(d / "generation.json", json.dumps(info, indent=2) + "\n")
            msg += f", {len(self.last['files'])} candidate PNGs and grid.png"
        self.print(msg)
