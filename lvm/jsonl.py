"""The released evaluation files: JSON lines of image paths, read one way by every command.

    for rec in read_records("eval.jsonl", {"input": False, "target": True}):  # key -> required; JsonlRecord or Skipped
        ...

A line is a JSON object; the keys that hold images (`input`, `target`, `output` in the release, renamed by
`--json-*-key`) hold a list of paths, and a single path string is read as a one-item list (the release
writes `"target"` as a list, older files as a string). Relative image paths are joined to the input base
folder: `--input-base-dir` when given (as the release's `input_base_dir`), else the JSONL file's own folder,
so a file and its images can move together. Output paths are joined to `--output-base-dir` (default: the
current folder, as the release). An absolute path stays as it is. `--max-examples N` keeps the first N lines
that hold JSON (the release cuts before it reads images, so skipped lines still count).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from lvm_base.errors import InputError


@dataclass
class JsonlRecord:
    line: int                    # 1-based line number in the file
    paths: dict[str, list[str]]  # key -> resolved paths
    raw: dict                    # the JSON object as read


@dataclass
class Skipped:
    line: int
    reason: str


def resolve(path: str, base: str | os.PathLike | None) -> str:
    """`path` joined to `base` as os.path.join does (an absolute `path` wins); `base` None leaves it."""
    return str(path) if base is None else os.path.join(str(base), str(path))


def _paths(rec: dict, key: str, required: bool) -> list[str] | None:
    v = rec.get(key)
    if v is None:
        if required:
            raise InputError(f'no "{key}" key')
        return None
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise InputError(f'"{key}" must be a path or a list of paths')
    return v


def read_records(path, keys: dict[str, bool], input_base_dir=None, output_keys=(), output_base_dir=None,
                 max_examples: int = 0):
    """JsonlRecord (or Skipped, with the reason) for each non-empty line of `path`.

    `keys`: JSON key -> required. Keys in `output_keys` resolve against `output_base_dir`, the others against
    `input_base_dir` (default: the JSONL file's folder)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    in_base = Path(input_base_dir) if input_base_dir else path.parent
    out_base = Path(output_base_dir) if output_base_dir else None
    seen = 0
    # Bytes, split at line ends only: a line that is not UTF-8 is one bad line, skipped and counted like
    # a line that is not JSON, rather than the end of the whole file.
    for n, raw in enumerate(path.read_bytes().splitlines(), 1):
        if not raw.strip():
            continue
        if max_examples and seen >= max_examples:
            return
        try:
            rec = json.loads(raw.decode("utf-8-sig" if n == 1 else "utf-8"))
        except UnicodeDecodeError as e:
            yield Skipped(n, f"not UTF-8 text (byte 0x{e.object[e.start]:02x} at column {e.start + 1})")
            continue
        except json.JSONDecodeError as e:
            yield Skipped(n, f"not JSON ({e.msg})")
            continue
        seen += 1
        try:
            if not isinstance(rec, dict):
                raise InputError("not a JSON object")
            got = {}
            for key, required in keys.items():
                v = _paths(rec, key, required)
                if v is not None:
                    base = out_base if key in output_keys else in_base
                    got[key] = [resolve(p, base) for p in v]
        except InputError as e:
            yield Skipped(n, str(e))
            continue
        yield JsonlRecord(n, got, rec)
