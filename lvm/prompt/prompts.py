"""Visual prompts: the two prompt modes and the prompt-file format.

- **sequential**: frames f1 .. fm -> the next n frames (video continuation, 3D rotation continuation).
- **analogy**: example pairs then a query, `A1 A1' ... Ak Ak' B -> B'` (one new image).

A prompt file is YAML; image paths are relative to the file:

    # prompts/rotation.yaml
    mode: sequential
    description: a held-out object turning 15 degrees per frame
    images: [rotation/00.png, rotation/01.png, rotation/02.png]
    n: 1                       # images to generate
    target: [rotation/03.png]  # optional: what should come next (shown next to the result)

    # prompts/depth.yaml
    mode: analogy
    pairs: [[depth/a1.png, depth/a1_depth.png], [depth/a2.png, depth/a2_depth.png]]
    query: depth/b.png
    target: depth/b_depth.png

The model sees exactly the images in order as raw image tokens (no BOS, image i at positions 256*i ..),
which is how the released LVM inference builds its prompts too.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lvm.generate.sampling import DEFAULTS
from lvm_base.errors import InputError
from lvm_base.files import atomic_write_text

MODES = ("sequential", "analogy")


@dataclass
class Prompt:
    """An ordered visual prompt. `groups` keeps how images were added (a frame, a pair, a query) for /undo."""

    mode: str = "sequential"
    groups: list[tuple[str, list[Path]]] = field(default_factory=list)  # (kind, paths), kind in frame/pair/query
    n_new: int = DEFAULTS.n
    target: list[Path] = field(default_factory=list)
    description: str = ""

    @property
    def images(self) -> list[Path]:
        return [p for _, paths in self.groups for p in paths]

    @property
    def labels(self) -> list[str]:
        """A short label per image for grids: f1 f2 ... or A1 A1' A2 A2' ... B."""
        out, k = [], 0
        for kind, paths in self.groups:
            if kind == "pair":
                k += 1
                out += [f"A{k}", f"A{k}'"]
            elif kind == "query":
                out.append("B")
            else:
                out.append(f"f{len(out) + 1}")
        return out

    def add_frames(self, paths):
        for p in paths:
            self.groups.append(("frame", [Path(p)]))

    def add_pair(self, a, b):
        self.mode = "analogy"
        self.groups.append(("pair", [Path(a), Path(b)]))

    def set_query(self, b):
        self.mode = "analogy"
        self.groups = [g for g in self.groups if g[0] != "query"]
        self.groups.append(("query", [Path(b)]))

    def undo(self):
        if not self.groups:
            raise InputError("nothing to undo: the prompt is empty")
        return self.groups.pop()

    def check(self):
        if not self.groups:
            raise InputError("the prompt has no images (add image paths, /pair A B, /query B or /load FILE)")
        if self.mode == "analogy" and self.groups[-1][0] != "query":
            raise InputError("an analogy prompt ends with a query image: use /query B")


def expand_paths(specs, base: Path | None = None) -> list[Path]:
    """Paths or globs (relative to `base` if given) -> existing files, in order; a glob with no match errors."""
    out = []
    for spec in specs:
        spec = os.path.expanduser(str(spec))
        full = str(base / spec) if base is not None and not os.path.isabs(spec) else spec
        if glob.has_magic(full):
            hits = sorted(glob.glob(full))
            if not hits:
                raise InputError(f"{spec}: no files match")
            out += [Path(h) for h in hits]
        else:
            p = Path(full)
            if not p.is_file():
                raise InputError(f"{spec}: no such file" if not p.exists() else f"{spec}: not a file")
            out.append(p)
    return out


def _paths(v, key: str, path: Path, base: Path, one: bool = False) -> list[Path]:
    """The files that `v`, entry `key` of the prompt file `path`, names: a path, a glob or a list of them
    (one file when `one`); every error is one line naming the file and the key."""
    specs = [v] if isinstance(v, (str, os.PathLike)) else v
    if one and not isinstance(v, (str, os.PathLike)):
        raise InputError(f"{path}: '{key}' must be one image path, got {v!r}")
    if not isinstance(specs, list) or not all(isinstance(x, (str, os.PathLike)) for x in specs):
        raise InputError(f"{path}: '{key}' must be a path or a list of paths, got {v!r}")
    try:
        files = expand_paths(specs, base)
    except InputError as e:  # the glob's or path's own error, in the prompt file's name
        raise InputError(f"{path}: '{key}': {e}") from None
    if one and len(files) != 1:
        raise InputError(f"{path}: '{key}' must name one image, {v!r} matches {len(files)}")
    return files


def _count(d: dict, path: Path) -> int:
    """The prompt file's `n`: images to generate, a whole number >= 1 (default DEFAULTS.n, 1)."""
    n = d.get("n", DEFAULTS.n)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"{path}: 'n' must be a whole number >= 1, got {n!r}")
    return n


def load_prompt(path) -> Prompt:
    """Read a prompt YAML file (format in the module docstring)."""
    from lvm_base.config import read_yaml_mapping

    path = Path(path)
    d = read_yaml_mapping(path, "prompt file", "a YAML mapping with 'mode' and images")
    known = {"mode", "images", "pairs", "query", "n", "target", "description"}
    if set(d) - known:
        raise InputError(f"{path}: unknown keys {sorted(set(d) - known, key=str)} (known: {sorted(known)})")
    mode = d.get("mode", "sequential")
    if mode not in MODES:
        raise InputError(f"{path}: mode must be one of {MODES}, got {mode!r}")
    base = path.parent
    p = Prompt(mode=mode, description=str(d.get("description", "")))
    n = _count(d, path)
    if mode == "sequential":
        if "images" not in d or "pairs" in d or "query" in d:
            raise InputError(f"{path}: a sequential prompt lists 'images' (and no pairs/query)")
        p.add_frames(_paths(d["images"], "images", path, base))
        p.n_new = n
    else:
        if "query" not in d:
            raise InputError(f"{path}: an analogy prompt needs 'query'")
        pairs = d.get("pairs") or []
        if not isinstance(pairs, list):
            raise InputError(f"{path}: 'pairs' must be a list of [A, A'] pairs, got {pairs!r}")
        for i, pair in enumerate(pairs):
            if not isinstance(pair, list) or len(pair) != 2:
                raise InputError(f"{path}: each entry of 'pairs' is [A, A'], entry {i} is {pair!r}")
            # each side names one file: a glob matching several would shift every later image by one
            a, b = (_paths(pair[j], f"pairs[{i}][{j}]", path, base, one=True)[0] for j in (0, 1))
            p.add_pair(a, b)
        p.set_query(_paths(d["query"], "query", path, base, one=True)[0])
        if n != 1:
            raise InputError(f"{path}: an analogy prompt generates exactly one image (n: 1)")
    if d.get("target") is not None:
        p.target = _paths(d["target"], "target", path, base)
    p.check()
    return p


def save_prompt(p: Prompt, path) -> Path:
    """Write `p` as a prompt YAML file (paths relative to the file's folder where possible)."""
    path = Path(path)
    rel = lambda q: os.path.relpath(Path(q).resolve(), path.parent.resolve())  # noqa: E731
    d: dict = {"mode": p.mode}
    if p.description:
        d["description"] = p.description
    if p.mode == "sequential":
        d["images"] = [rel(q) for q in p.images]
        d["n"] = p.n_new
    else:
        d["pairs"] = [[rel(a) for a in paths] for kind, paths in p.groups if kind == "pair"]
        d["query"] = [rel(paths[0]) for kind, paths in p.groups if kind == "query"][0]
    if p.target:
        d["target"] = [rel(q) for q in p.target]
    atomic_write_text(path, yaml.safe_dump(d, sort_keys=False))
    return path
