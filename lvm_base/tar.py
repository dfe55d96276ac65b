"""Reading webdataset tar shards: which files a shard spec names, and the samples inside them.

A shard spec is any of
- a directory: every ``*.tar`` under it, recursively, sorted (names starting with a dot are skipped);
- a ``.tar`` file;
- a glob (``shards/*.tar``) or a brace range (``train-{000..009}.tar``; both may be combined);
- a list of any of those (their shards in the order given).

A sample is the members that share a key, ``{key}.{ext}`` (the key ends at the first dot of the file name,
as in webdataset), returned as ``{"__key__": key, ext: bytes, ...}`` in file order. Nothing is unpickled.

Shards of any size are read member by member without holding a whole shard: `index_tar` lists where each
member's bytes lie from the headers alone, and `read_tar_member` reads just one member's bytes.

The shard writer (atomic, byte-identical) is `data_builders/shards.py`; this reader sits in `tokenizer`, the
bottom of the import graph, because both the tokenizer's image datasets and the data builders read shards.
"""

from __future__ import annotations

import glob
import os
import re
import tarfile
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

from .errors import InputError

_BRACES = re.compile(r"\{(\d+)\.\.(\d+)\}")
# Names one spec may expand to: more shards than any dataset here has (LAION-5B is ~230k), and few enough
# that the list (~100 MB) and a stat of each stay in seconds.
MAX_EXPANDED = 1_000_000


def expand_braces(spec: str) -> list[str]:
    """`a-{00..02}.tar` -> `a-00.tar a-01.tar a-02.tar` (zero-padded to the first bound's width); an
    InputError, before anything is expanded, when the ranges name more than MAX_EXPANDED names."""
    count = 1
    for a, b in _BRACES.findall(spec):
        if len(a) > 18 or len(b) > 18:  # past int64: no shard set is numbered so
            raise InputError(f"{spec}: brace range {{{a}..{b}}} has bounds past 18 digits")
        count *= max(0, int(b) - int(a) + 1)
    if count > MAX_EXPANDED:
        raise InputError(f"{spec}: the brace ranges name {count:,} shards, more than {MAX_EXPANDED:,}; "
                         "name a folder or a glob instead")
    return _expand(spec)


def _expand(spec: str) -> list[str]:
    m = _BRACES.search(spec)
    if not m:
        return [spec]
    a, b = m.group(1), m.group(2)
    out = []
    for i in range(int(a), int(b) + 1):
        out.extend(_expand(spec[:m.start()] + str(i).zfill(len(a)) + spec[m.end():]))
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


def read_list_file(path: str | os.PathLike, what: str = "image list") -> list[str]:
    """The entries of a list file (one path per line; blank lines and `#` comments skipped), stripped; a
    one-line InputError naming the file, and the line, when it is unreadable or not UTF-8 text."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot read {what} ({e.strerror or e})") from None
    out = []
    for n, line in enumerate(raw.splitlines(), 1):
        try:
            text = line.decode("utf-8-sig" if n == 1 else "utf-8").strip()
        except UnicodeDecodeError as e:
            raise InputError(f"{path}: line {n} of the {what} is not UTF-8 text (byte 0x{e.object[e.start]:02x}); "
                             "a list holds one UTF-8 path per line") from None
        if text and not text.startswith("#"):
            out.append(text)
    return out


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
        split = split_key(name)
        if split is None:
            continue
        key, ext = split
        if current is None or current["__key__"] != key:
            if current is not None:
                yield current
            current = {"__key__": key}
        current[ext] = data
    if current is not None:
        yield current


def split_key(name: str) -> tuple[str, str] | None:
    """(key, ext) of a member name: the key ends at the first dot of the file name (`d/k.0.png` -> `d/k`,
    `0.png`); None for a name without a dot."""
    base = name.rsplit("/", 1)[-1]
    if "." not in base:
        return None
    stem, ext = base.split(".", 1)
    return name[: len(name) - len(base)] + stem, ext


class TarIndex(NamedTuple):
    """A tar's regular files from its headers: `members` as (name, data offset, size) in file order, and
    `error`, why the scan stopped before the end of the archive ("" when it did not)."""

    members: list
    error: str


# Offsets into a compressed tar are not file offsets, so those are refused by name rather than as bad headers.
_COMPRESSED = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd"}


def index_tar(path: str | os.PathLike) -> TarIndex:
    """Where each member's bytes lie in an uncompressed tar, read from the headers only (the data is seeked
    over, so a 1 GB shard costs one 512-byte read per member). A member cut short by the end of the file is
    listed (`read_tar_member` returns it short); a bad header ends the scan and is named in `error`."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(6)
    except OSError as e:
        return TarIndex([], f"unreadable ({e.strerror})")
    for magic, kind in _COMPRESSED.items():
        if head.startswith(magic):
            return TarIndex([], f"{kind}-compressed; decompress it to a plain .tar first")
    try:
        tar = tarfile.open(path, "r:")
    except (OSError, tarfile.TarError) as e:
        return TarIndex([], f"not a tar ({e})")
    members, error = [], ""
    with tar:
        try:
            for m in tar:
                if m.isfile() and not m.issparse():
                    members.append((m.name, m.offset_data, m.size))
        except (OSError, tarfile.TarError, EOFError) as e:
            # past the end of the file: the last member is truncated, which reading it reports
            error = "" if tar.offset > size else f"bad header at byte {tar.offset} ({e})"
        if not error:
            error = _garbage_at(tar, size)
    return TarIndex(members, error)


def _garbage_at(tar: tarfile.TarFile, size: int) -> str:
    """Why tarfile stopped early, if it did: it ends a scan quietly at an invalid header, so the block where
    it stopped is read back; the end of an archive is zero blocks, or the end of a truncated file."""
    if tar.offset >= size:
        return ""
    tar.fileobj.seek(tar.offset)
    block = tar.fileobj.read(tarfile.BLOCKSIZE)
    return f"bad header at byte {tar.offset}" if len(block) == tarfile.BLOCKSIZE and any(block) else ""


def read_tar_member(path: str | os.PathLike, offset: int, size: int) -> bytes:
    """The data of one member (`offset`, `size` from `index_tar`), reading nothing else of the file; fewer
    bytes when the file ends first. InputError if the file cannot be read."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(size)
    except OSError as e:
        raise InputError(f"{path}: unreadable tar shard ({e.strerror})") from None
