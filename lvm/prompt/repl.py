"""The `lvm prompt` session: build a visual prompt, generate candidates, look at them, save them.

`Session` holds the model, the tokenizer, the prompt and the sampling settings; `Session.command(line)`
runs one REPL line, so the REPL, the one-shot mode and the tests all drive the same code. `repl()` is the
interactive loop: readline history, one-line errors that never end the session, Ctrl-C cancels a running
generation (and clears the input line otherwise), Ctrl-D or /quit leaves.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
import time
from pathlib import Path

from lvm.checkpoints import check_fit, or_demo
from lvm.prompt.prompts import Prompt, expand_paths, load_prompt, save_prompt
from tokenizer.common.errors import InputError

HISTORY = Path(os.environ.get("LVM_HISTORY", Path.home() / ".lvm_history"))

HELP = """\
  PATH|GLOB ...        add images (frames of a sequential prompt)
  /pair A B            add an example pair A -> A' (analogy prompt)
  /query B             set the analogy query (the image whose B' is generated)
  /gen [n]             generate n new images (default: the prompt's n, 1 for analogies)
  /candidates k        generate k candidates at once (one batch, seeds seed..seed+k-1)
  /set temperature|top_k|top_p|seed VALUE
  /show                list the prompt and the settings (and preview the prompt)
  /undo                remove the last added image / pair / query
  /clear               empty the prompt
  /load FILE.yaml      load a prompt file
  /save DIR            save the prompt (prompt.yaml + images) and the last results to DIR
  /help                this help
  /quit                leave (Ctrl-D works too; Ctrl-C cancels a running generation)"""


class Session:
    def __init__(self, model_dir=None, tokenizer_dir=None, out_dir="out/prompt", display: str | None = None,
                 engine=None, tokenizer=None, device: str = "auto", precision: str = "auto",
                 dtype: str | None = None, print_fn=print):
        from lvm.generate.engine import Sampling
        from tokenizer.common.hardware import precision_name

        if dtype is not None:  # the older keyword: "bfloat16" / "float32"
            precision = precision_name(dtype)

        self.print = print_fn
        self.out_dir = Path(out_dir)
        self.display = display  # None = detect, "none" = off
        self.prompt = Prompt()
        self.sampling = Sampling()
        self.candidates = 1
        self.last: dict | None = None
        self._codes: dict = {}
        self._runs = 0
        self.engine = engine or self._load_model(model_dir, device, precision)
        # The tokenizer computes where the model does, under the same precision request.
        self.tok = tokenizer or self._load_tokenizer(tokenizer_dir, self.engine.plan.device, precision)
        try:
            self.check_match()
        except InputError as e:
            self.print(f"warning: {e}; /gen will refuse until they match")

    # ---- loading ----
    def _load_model(self, model_dir, device, precision):
        from lvm.generate.engine import Engine

        if model_dir is None:
            model_dir = or_demo("model")
            self.print(f"using the demo model {model_dir}")
        t = time.perf_counter()
        engine = Engine.from_pretrained(model_dir, device=device, precision=precision)
        self.print(f"model {model_dir}: vocab {engine.vocab_size} (codebook {engine.layout.codebook_size}), "
                   f"{len(engine.layers)} layers, context {engine.context_images} images, "
                   f"{engine.describe()} [{time.perf_counter() - t:.1f}s]")
        return engine

    def _load_tokenizer(self, tokenizer_dir, device, precision):
        tokenizer_dir = or_demo("tokenizer", tokenizer_dir)
        from tokenizer import load_tokenizer

        tok = load_tokenizer(tokenizer_dir, device=device, precision=precision).eval()
        self.print(f"tokenizer {tokenizer_dir}: {tok.codebook_size} codes, {tok.resolution} px, "
                   f"pixels {tok.value_range}, resize {tok.resize_mode}")
        return tok

    def check_match(self):
        check_fit(self.engine.layout, self.tok)

    # ---- prompt images ----
    def _check_images(self, paths):
        from tokenizer.image_io import load_image

        for p in paths:
            load_image(p)  # raises ImageLoadError naming the file
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

    # ---- commands ----
    def command(self, line: str) -> bool:
        """Run one line; returns False when the session should end. Raises InputError for bad input."""
        line = line.strip()
        if not line or line.startswith("#"):
            return True
        try:
            words = shlex.split(line)
        except ValueError as e:
            raise InputError(f"cannot parse the line ({e})") from None
        # "/gen" is a command, "/data/x.png" a path: command names are one word of letters.
        if not re.fullmatch(r"/[A-Za-z_]+", words[0]):
            paths = self._check_images(expand_paths(words))
            self.prompt.add_frames(paths)
            self.print(f"added {len(paths)} image(s); prompt has {len(self.prompt.images)}")
            return True
        cmd, args = words[0].lower(), words[1:]
        handler = getattr(self, "cmd_" + cmd[1:], None)
        if handler is None:
            raise InputError(f"unknown command {cmd} (type /help)")
        return handler(args) is not False

    def _nargs(self, args, n, usage):
        if len(args) not in (n if isinstance(n, tuple) else (n,)):
            raise InputError(f"usage: {usage}")

    def cmd_help(self, args):
        self.print(HELP)

    def cmd_quit(self, args):
        return False

    cmd_exit = cmd_q = cmd_quit

    def cmd_pair(self, args):
        self._nargs(args, 2, "/pair A B")
        a, b = self._check_images(expand_paths(args))
        self.prompt.add_pair(a, b)
        self.print(f"added pair {a.name} -> {b.name}; prompt has {len(self.prompt.images)} images")

    def cmd_query(self, args):
        self._nargs(args, 1, "/query B")
        (b,) = self._check_images(expand_paths(args))
        self.prompt.set_query(b)
        self.print(f"query {b.name}; prompt has {len(self.prompt.images)} images")

    def cmd_candidates(self, args):
        self._nargs(args, 1, "/candidates k")
        k = _int(args[0], "candidates")
        if not 1 <= k <= 16:
            raise InputError("candidates must be between 1 and 16")
        self.candidates = k
        self.print(f"candidates = {k}")

    def cmd_set(self, args):
        import dataclasses

        from lvm.generate.engine import Sampling

        self._nargs(args, 2, "/set temperature|top_k|top_p|seed VALUE")
        key, value = args[0].lower().replace("-", "_"), args[1]
        kinds = {"temperature": float, "top_k": int, "top_p": float, "seed": int}
        if key not in kinds:
            raise InputError(f"/set: unknown setting {key!r} (temperature, top_k, top_p, seed)")
        try:
            v = kinds[key](value)
        except ValueError:
            raise InputError(f"/set {key}: {value!r} is not a number") from None
        self.sampling = Sampling(**{**dataclasses.asdict(self.sampling), key: v})
        self.print(f"{key} = {v}")

    def cmd_show(self, args):
        p = self.prompt
        self.print(f"mode {p.mode}; {len(p.images)} images; n {p.n_new}; candidates {self.candidates}; "
                   f"temperature {self.sampling.temperature}, top_k {self.sampling.top_k}, "
                   f"top_p {self.sampling.top_p}, seed {self.sampling.seed}")
        for label, path in zip(p.labels, p.images):
            self.print(f"  {label:>4}  {path}")
        if p.target:
            self.print(f"  target {' '.join(map(str, p.target))}")
        if p.images and self.display != "none":
            from lvm.prompt import display
            from tokenizer.image_io import load_image, make_grid

            display.preview(make_grid([[load_image(x) for x in p.images]], col_labels=p.labels, cell=64),
                            self.display)

    def cmd_undo(self, args):
        kind, paths = self.prompt.undo()
        self.print(f"removed {kind} {' '.join(q.name for q in paths)}; prompt has {len(self.prompt.images)}")

    def cmd_clear(self, args):
        self.prompt = Prompt()
        self.print("prompt cleared")

    def cmd_load(self, args):
        self._nargs(args, 1, "/load prompt.yaml")
        self.prompt = load_prompt(args[0])
        self._check_images(self.prompt.images + self.prompt.target)
        self.print(f"loaded {args[0]}: {self.prompt.mode}, {len(self.prompt.images)} images"
                   + (f" ({self.prompt.description})" if self.prompt.description else ""))

    def cmd_gen(self, args):
        self._nargs(args, (0, 1), "/gen [n]")
        n = _int(args[0], "n") if args else (self.prompt.n_new if self.prompt.mode == "sequential" else 1)
        if n < 1:
            raise InputError("/gen n: n must be >= 1")
        try:
            res = self.generate(n)
        except KeyboardInterrupt:
            self.print("\ngeneration cancelled")
            return
        self.print(f"wrote {len(res['files'])} candidate PNGs and {res['grid']}")
        if self.display != "none":
            from lvm.prompt import display

            display.preview(res["grid_image"], self.display)

    def cmd_save(self, args):
        self._nargs(args, 1, "/save DIR")
        self.save(Path(args[0]))

    # ---- work ----
    def generate(self, n: int, out_dir: Path | None = None, write: bool = True) -> dict:
        """Generate n images x candidates for the current prompt; write PNGs + grid; return what was written."""
        from tokenizer.image_io import load_image, make_grid, save_png

        self.prompt.check()
        self.check_match()
        paths = self.prompt.images
        codes = self.encode(paths)
        layout = self.engine.layout
        if len(paths) + n > self.engine.context_images:
            self.print(f"note: {len(paths)} prompt images + {n} new exceed the {self.engine.context_images}-image "
                       f"context: the model sees the last {self.engine.context_images - 1} images at each step")
        last = [0.0]

        def progress(j, t, tps):
            now = time.perf_counter()
            if t == layout.tokens_per_image or now - last[0] > 0.2:
                last[0] = now
                sys.stdout.write(f"\r  image {j + 1}/{n}: tokens {t}/{layout.tokens_per_image}, "
                                 f"{tps:.1f} tokens/s ")
                sys.stdout.flush()
                if t == layout.tokens_per_image:
                    sys.stdout.write("\n")

        out = self.engine.generate(codes, n_new=n, candidates=self.candidates, sampling=self.sampling,
                                   progress=progress)
        for note in out.notes:
            self.print(f"note: {note}")
        flat = out.images.reshape(-1, layout.tokens_per_image)
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
        res_px = self.tok.resolution
        shown = [load_image(p).resize((res_px, res_px)) for p in paths]
        k = len(shown)
        target = [load_image(p).resize((res_px, res_px)) for p in self.prompt.target]
        rows = [shown + target[:n]] + [[None] * k + imgs for imgs in per]
        labels = ["prompt" + (" + target" if target else "")] + [f"seed {s}" for s in seeds]
        col_labels = self.prompt.labels + [f"new {j + 1}" for j in range(n)]
        grid = make_grid(rows, labels=labels, col_labels=col_labels)
        grid_path = save_png(grid, out_dir / "grid.png")
        info = {"prompt": [str(p) for p in paths], "mode": self.prompt.mode, "n": n,
                "candidates": self.candidates, "sampling": vars(self.sampling), "seeds": seeds,
                "tokens_per_s": round(out.tokens_per_s, 2), "seconds": round(out.seconds, 2),
                "device": self.engine.plan.device, "precision": self.engine.plan.precision,
                "dropped_images": out.dropped_images, "files": [str(f) for f in files]}
        from tokenizer.common.files import atomic_write_text

        atomic_write_text(out_dir / "generation.json", json.dumps(info, indent=2) + "\n")
        self.print(f"  {out.new_tokens} tokens in {out.seconds:.1f}s ({out.tokens_per_s:.1f} tokens/s)")
        self.last = {"dir": out_dir, "files": files, "grid": grid_path, "grid_image": grid, "info": info,
                     "images": per}
        return self.last

    def save(self, d: Path):
        """prompt.yaml + copies of its images (so DIR is self-contained), and the last results if any."""
        import shutil

        from tokenizer.image_io import save_png

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
        msg = f"saved {d / 'prompt.yaml'}"
        if self.last:
            for f in self.last["files"]:
                shutil.copyfile(f, d / Path(f).name)
            save_png(self.last["grid_image"], d / "grid.png")
            from tokenizer.common.files import atomic_write_text

            # The saved folder stands alone: its generation.json names the copies, not the session's files.
            info = dict(self.last["info"], files=[Path(f).name for f in self.last["files"]])
            atomic_write_text(d / "generation.json", json.dumps(info, indent=2) + "\n")
            msg += f", {len(self.last['files'])} candidate PNGs and grid.png"
        self.print(msg)


def _int(s, what):
    try:
        return int(s)
    except ValueError:
        raise InputError(f"{what} must be an integer, got {s!r}") from None


def one_line_error(e: BaseException) -> str:
    from lvm.cli import _one_line

    return _one_line(e)


def repl(session: Session, stdin=None) -> int:
    """The interactive loop. Piped input (not a terminal) is echoed so transcripts read like sessions."""
    stdin = stdin or sys.stdin
    interactive = stdin.isatty()
    if interactive:
        try:
            import readline

            HISTORY.parent.mkdir(parents=True, exist_ok=True)
            if HISTORY.is_file():
                readline.read_history_file(HISTORY)
            readline.set_history_length(1000)
        except (ImportError, OSError):
            readline = None
    session.print("type /help for commands, /quit to leave")
    try:
        while True:
            try:
                if interactive:
                    line = input("lvm> ")
                else:
                    line = stdin.readline()
                    if not line:
                        break
                    line = line.rstrip("\n")
                    session.print(f"lvm> {line}")
            except EOFError:
                session.print("")
                break
            except KeyboardInterrupt:
                session.print("^C")
                continue
            try:
                if not session.command(line):
                    break
            except KeyboardInterrupt:
                session.print("\ncancelled")
            except (InputError, OSError) as e:
                session.print(f"error: {one_line_error(e)}")
    finally:
        if interactive and readline is not None:
            try:
                readline.write_history_file(HISTORY)
            except OSError:
                pass
    return 0
