"""Reading webdataset tar shards: which files a shard spec names, and the samples inside them.

A shard spec is any of
- a directory: every ``*.tar`` under it, recursively, sorted (names starting with a dot are skipped);
- a ``.tar`` file;
- a glob (``shards/*.tar``) or a brace range (``train-{000..009}.tar``; both may be combined);
- a list of any of those (their shards in the order given).

A sample is the members that share a key, ``{key}.{ext}`` (the key ends at the first dot of the file name,
as in webdataset), returned as ``{"__key__": key, ext: bytes, ...}`` in file order. Nothing is unpickled.

The shard writer (atomic, byte-identical) is `data_builders/shards.py`; this reader sits in `tokenizer`, the
bottom of the import graph, because both the tokenizer's image datasets and the data builders read shards.
"""

from __future__ import annotations

import glob
import os
import re
import tarfile
from pathlib import Path
from typing import Iterable, Iterator

from .common.errors import InputError

_BRACES = re.compile(r"\{(\d+)\.\.(\d+)\}")


def expand_braces(spec: str) -> list[str]:
    """`a-{00..02}.tar` -> `a-00.tar a-01.tar a-02.tar` (zero-padded to the first bound's width)."""
    m = _BRACES.search(spec)
    if not m:
        return [spec]
    a, b = m.group(1), m.group(2)
    out = []
    for i in range(int(a), int(b) + 1):
        out.extend(expand_braces(spec[:m.start()] + str(i).zfill(len(a)) + spec[m.end():]))
    return out


def is_shard_spec(spec: str) -> bool:
    """Whether a path string names tar shards (`x.tar`, or a glob / brace range over `.tar` names)."""
    return spec.endswith(".tar") or ".tar" in spec and ("{" in spec or "*" in spec)


def list_shards(spec: str | os.PathLike | Iterable) -> list[Path]:
    """The shard files of a spec (see the module docstring); an InputError when it names none."""
    if not isinstance(spec, (str, os.PathLike)):
        return [p for s in spec for p in list_shards(s)]
    parts = expand_braces(str(spec))
    found, missing = [], []
    for part in parts:
        p = Path(part)
        if p.is_dir():
            found += sorted(x for x in p.rglob("*.tar") if not x.name.startswith("."))
        elif p.is_file():
            found.append(p)
        elif any(c in part for c in "*?["):
            found += sorted(Path(x) for x in glob.glob(part) if x.endswith(".tar"))
        else:
            missing.append(part)
    if missing or not found:
        raise InputError(f"{spec}: no .tar shards found" + (f" (no such shard file: {missing[0]})" if missing else ""))
    return sorted(found, key=str) if len(parts) > 1 else found


def iter_tar_members(path: str | os.PathLike) -> Iterator[tuple[str, bytes]]:
    """(member name, bytes) of every regular file in a tar, in file order; InputError if unreadable."""
    # Plain tarfile rather than webdataset's tar_file_iterator: importing webdataset loads torch,
    # which the torch-free readers of shards (data-build workers, `lvm data preview`) never need.
    path = Path(path)
    try:
        tar = tarfile.open(path, "r")
    except (OSError, tarfile.TarError) as e:
        raise InputError(f"{path}: not a readable tar shard ({e})") from None
    with tar:
        try:
            for member in tar:
                if member.isfile():
                    yield member.name, tar.extractfile(member).read()
        except (OSError, tarfile.TarError, EOFError) as e:
            raise InputError(f"{path}: corrupt tar shard ({e})") from None


def iter_tar_samples(path: str | os.PathLike) -> Iterator[dict]:
    """Samples of a shard as {"__key__": key, ext: bytes}, in file order. Never unpickles anything."""
    # Grouped here, not by webdataset's group_by_keys, which would also lowercase extensions and add `__url__`.
    current: dict | None = None
    for name, data in iter_tar_members(path):
        base = name.rsplit("/", 1)[-1]
        if "." not in base:
            continue
        stem, ext = base.split(".", 1)
        key = name[: len(name) - len(base)] + stem
        if current is None or current["__key__"] != key:
            if current is not None:
                yield current
            current = {"__key__": key}
        current[ext] = data
    if current is not None:
        yield current
