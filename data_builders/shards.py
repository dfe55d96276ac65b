"""Shard files: webdataset-compatible tars, written deterministically and atomically.

A shard is a POSIX tar whose members are grouped into samples by key: ``{key}.{ext}``. Keys never contain
dots (webdataset splits the member name at the first dot). Members are written in sample order, with
fixed metadata (mtime 0, uid/gid 0, mode 0644), so the same samples always give byte-identical shards;
the file appears under its final name only when complete (temp + rename), so a killed build never
leaves a truncated shard that looks finished. Shards are read (and shard specs resolved) by
`lvm_base/tar.py`, the one reader for every package.

Token shards (the output of `lvm data tokenize`, the input of `lvm train`): one sample per visual sequence
with ``tokens.npy`` (integer array, shape (n_images, codes_per_image), saved without pickle) and ``json``
(the sequence's metadata: at least ``kind``; plus provenance such as source, frames, angles, task).
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from lvm_base.errors import InputError
from lvm_base.files import atomic_path
from lvm_base.tar import iter_tar_samples, list_shards  # the one shard reader, shared with the tokenizer

__all__ = ["check_key", "TarShardWriter", "encode_tokens", "decode_tokens",
           "token_sample", "iter_token_shard", "write_token_shard", "differences"]

_KEY_OK = re.compile(r"^[A-Za-z0-9_\-/]+$")


def check_key(key: str) -> str:
    if not key or not _KEY_OK.match(key):
        raise ValueError(f"shard key {key!r} must be non-empty letters, digits, '_', '-' or '/' (no dots)")
    return key


# Hand-written, not webdataset's TarWriter: this one fixes every member's metadata (byte-identical shards)
# and renames only a complete file into place, and importing webdataset loads torch in every build worker.
class TarShardWriter:
    """Write samples ({"__key__": str, ext: bytes, ...}) into one tar shard, atomically.

        with TarShardWriter("out/shard-000000.tar") as w:
            w.write({"__key__": "seq_0001", "json": b"{...}", "0.png": png_bytes})
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._ctx = atomic_path(self.path)
        self._tmp = self._ctx.__enter__()
        self._tar = tarfile.open(self._tmp, "w", format=tarfile.USTAR_FORMAT)
        self.count = 0

    def write(self, sample: dict) -> None:
        key = check_key(sample["__key__"])
        for ext, data in sample.items():
            if ext == "__key__":
                continue
            if isinstance(data, str):
                data = data.encode("utf-8")
            if not isinstance(data, (bytes, bytearray)):
                raise TypeError(f"sample {key}: field {ext!r} must be bytes, got {type(data).__name__}")
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
        self.count += 1

    def close(self, commit: bool = True) -> None:
        self._tar.close()
        if commit:
            self._ctx.__exit__(None, None, None)
        else:
            self._ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self._tar.close()
        self._ctx.__exit__(exc_type, exc, tb)
        return False


# ---- token shards ----

def encode_tokens(codes: np.ndarray) -> bytes:
    """(n_images, codes_per_image) integer codes -> .npy bytes (uint16 when they fit, else int32)."""
    codes = np.asarray(codes)
    if codes.ndim != 2 or not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(f"token arrays must be 2-D integer (n_images, codes), got {codes.dtype} {codes.shape}")
    dtype = np.uint16 if codes.size == 0 or (codes.min() >= 0 and codes.max() < 65536) else np.int32
    buf = io.BytesIO()
    np.save(buf, codes.astype(dtype), allow_pickle=False)
    return buf.getvalue()


def decode_tokens(data: bytes) -> np.ndarray:
    """.npy bytes -> int64 array (n_images, codes_per_image)."""
    arr = np.load(io.BytesIO(data), allow_pickle=False)
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"tokens.npy must be a 2-D integer array, got {arr.dtype} {arr.shape}")
    return arr.astype(np.int64)


def token_sample(key: str, codes: np.ndarray, meta: dict) -> dict:
    """A token-shard sample: tokens.npy + json."""
    meta = dict(meta)
    meta.setdefault("n_images", int(np.asarray(codes).shape[0]))
    return {"__key__": key, "tokens.npy": encode_tokens(codes),
            "json": json.dumps(meta, sort_keys=True).encode("utf-8")}


def iter_token_shard(path: str | os.PathLike) -> Iterator[tuple[str, np.ndarray, dict]]:
    """(key, codes (n_images, codes_per_image) int64, metadata) for each sequence of a token shard."""
    for sample in iter_tar_samples(path):
        if "tokens.npy" not in sample:
            continue
        try:
            codes = decode_tokens(sample["tokens.npy"])
            meta = json.loads(sample["json"]) if "json" in sample else {}
        except (ValueError, json.JSONDecodeError) as e:
            raise InputError(f"{path}: sample {sample['__key__']}: {e}") from None
        yield sample["__key__"], codes, meta


def write_token_shard(path: str | os.PathLike, items: Iterable[tuple[str, np.ndarray, dict]]) -> int:
    """Write (key, codes, meta) items as one token shard; returns the number of sequences."""
    with TarShardWriter(path) as w:
        for key, codes, meta in items:
            w.write(token_sample(key, codes, meta))
        return w.count


# ---- fingerprints: what shaped the finished shards of a folder ----

def differences(old, new, name: str = "") -> list[str]:
    """`key old -> new` for every value that differs between two plain (JSON/YAML-loaded) records.

    A key that `old` lacks is not a difference: a record carries only the fields it knows (an import's tokens
    info has no `resolution` unless the JSONL's own tokens info had one)."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in new if k in old for d in differences(old[k], new[k], f"{name}.{k}" if name else k)]
    if isinstance(old, list) and isinstance(new, list):
        if len(old) != len(new):
            return [f"{name or 'value'}: {len(old)} -> {len(new)} entries"]
        return [d for i, (a, b) in enumerate(zip(old, new)) for d in differences(a, b, f"{name}[{i}]")]
    return [] if old == new else [f"{name or 'value'} {_short(old)} -> {_short(new)}"]


def _short(v) -> str:
    text = json.dumps(v, sort_keys=True) if not isinstance(v, str) else repr(v)
    return text if len(text) <= 60 else text[:57] + "..."
