"""The inverse of `export_jsonl`: the original LVM release's token JSON lines -> token shards for `lvm train`.

The release stores token data as one visual sequence per line, `{"tokens": "<base64 of a little-endian
int32 array>"}`, its images' codes back to back (the released rows: 4096 tokens = 16 images x 256 codes).
`import_jsonl` writes them as this project's token shards (`shards.py`: one sample per sequence with
tokens.npy (n_images, codes_per_image) and json), plus the `tokens_info.json` that `lvm data tokenize`
writes beside its shards.

An import never removes or replaces a file it did not write: each one records itself in
`{out}/{prefix}.import.json` before its first shard, so a rerun (or a killed run's rerun) may replace its own
`{prefix}-*.tar`, several JSONL files may be imported into one folder, and any other token shard there makes
the import an InputError (training would read both).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from lvm_base.errors import InputError

from lvm_base.files import atomic_write_text

from .encode import FINGERPRINT, TOKENS_INFO as INFO_NAME, write_tokens_info
from .sequence import MAX_IMAGES
from .shards import differences, write_token_shard

RELEASED_CODEBOOK_SIZE = 8192  # the released VQGAN's codebook (= lvm.tokens.DEFAULT_CODEBOOK_SIZE)
DEFAULT_SHARD_SIZE = 1024  # sequences per shard: ~8 MB of 16-image sequences, many shards for many workers
MAX_WARNINGS = 20  # bad lines warned about one by one; the rest are only counted

__all__ = ["import_jsonl", "decode_row", "BadRow", "RELEASED_CODEBOOK_SIZE", "DEFAULT_SHARD_SIZE"]


class BadRow(ValueError):
    """Why one JSONL line cannot be imported: `reason` (a short tag, counted) and a readable message."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def decode_row(line: bytes | str, codes_per_image: int, codebook_size: int) -> np.ndarray:
    """One JSONL line -> its codes, int32 (n_images, codes_per_image); raises BadRow saying what is wrong."""
    try:
        obj = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadRow("json", f"bad JSON ({getattr(e, 'msg', e)})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("tokens"), str):
        raise BadRow("no_tokens", 'not an object with a "tokens" string')
    try:
        raw = base64.b64decode(obj["tokens"], validate=True)
    except (binascii.Error, ValueError) as e:
        raise BadRow("base64", f"bad base64 in \"tokens\" ({e})") from None
    if not raw:
        raise BadRow("empty", "no tokens")
    if len(raw) % 4:
        raise BadRow("length", f"{len(raw)} bytes is not a whole number of int32 tokens")
    toks = np.frombuffer(raw, dtype="<i4")
    if len(toks) % codes_per_image:
        raise BadRow("length", f"{len(toks)} tokens is not a multiple of {codes_per_image} codes per image")
    lo, hi = int(toks.min()), int(toks.max())
    if lo < 0 or hi >= codebook_size:
        raise BadRow("range", f"ids in [{lo}, {hi}] are outside the codebook [0, {codebook_size})")
    return toks.reshape(-1, codes_per_image)


def split_images(codes: np.ndarray, max_images: int = MAX_IMAGES) -> list[np.ndarray]:
    """(n_images, cpi) codes -> consecutive whole-image chunks of at most `max_images` images each."""
    return [codes[i:i + max_images] for i in range(0, len(codes), max_images)]


def _sidecar_info(src: Path) -> dict:
    side = src.parent / INFO_NAME
    if not side.is_file():
        return {}
    try:
        info = json.loads(side.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{side}: unreadable tokens info ({e})") from None
    if not isinstance(info, dict):
        raise InputError(f"{side}: tokens info must be a JSON object")
    return info


def resolve_info(src: Path, codes_per_image: int, codebook_size: int | None) -> dict:
    """The tokens info of the imported data; see `import_jsonl` for the codebook-size rule."""
    side = _sidecar_info(src)
    where = src.parent / INFO_NAME
    if side.get("codes_per_image") not in (None, codes_per_image):
        raise InputError(f"{where} says {side['codes_per_image']} codes per image, not {codes_per_image}: "
                         "pass the matching --codes-per-image")
    if codebook_size is not None and side.get("codebook_size") not in (None, codebook_size):
        raise InputError(f"{where} says codebook size {side['codebook_size']}, not {codebook_size}: pass the "
                         "matching --codebook-size (or move the stale tokens info away)")
    K = int(codebook_size if codebook_size is not None else side.get("codebook_size") or RELEASED_CODEBOOK_SIZE)
    if K < 2 or codes_per_image < 1:
        raise InputError(f"codebook size {K} must be >= 2 and codes per image {codes_per_image} >= 1")
    return {"tokenizer": "", **side, "codebook_size": K, "codes_per_image": int(codes_per_image),
            "imported_from": str(src)}


def _key_prefix(src: Path) -> str:
    # Keys and shard names come from the file name; webdataset splits member names at the first dot.
    return re.sub(r"[^A-Za-z0-9_\-]", "_", src.name.split(".")[0]) or "jsonl"


class _Warner:
    """One stderr line per bad line (the first MAX_WARNINGS), counted per reason."""

    def __init__(self, src: Path):
        self.src, self.counts = src, Counter()

    def __call__(self, lineno: int, bad: BadRow) -> None:
        self.counts[bad.reason] += 1
        n = sum(self.counts.values())
        if n <= MAX_WARNINGS:
            print(f"warning: {self.src}:{lineno}: skipped: {bad}", file=sys.stderr)
        if n == MAX_WARNINGS + 1:
            print(f"warning: {self.src}: more bad lines, not shown (counted in the summary)", file=sys.stderr)


def _record_path(out: Path, prefix: str) -> Path:
    return out / f"{prefix}.import.json"


def _records(out: Path) -> dict[str, str]:
    """prefix -> the JSONL file of every import recorded in `out` (an unreadable record names none)."""
    recs = {}
    for p in out.glob("*.import.json"):
        try:
            recs[p.name[:-len(".import.json")]] = str(json.loads(p.read_text())["jsonl"])
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
            continue
    return recs


def _own(out: Path, prefixes) -> list[Path]:
    pattern = re.compile(rf"(?:{'|'.join(re.escape(p) for p in prefixes)})-\d{{6}}\.tar") if prefixes else None
    return sorted(p for p in out.glob("*.tar") if pattern and pattern.fullmatch(p.name))


def claim_out(src: Path, out: Path, prefix: str, info: dict, fresh: bool = False) -> None:
    """Check that importing `src` into `out` replaces nothing but earlier imports' own files; InputError
    (one line naming the folder) otherwise. (`import_jsonl` records the import before its first shard.)

    Refused: a token shard in `out` that no import recorded (`lvm data tokenize` output, another tool's),
    a `{prefix}-*.tar` of another JSONL file of the same name, imports of another codebook size or codes
    per image, and `out` = the JSONL's folder when that holds the tokens info the import reads. With
    `fresh` the earlier imports' shards, records and tokens info are removed first, never other files."""
    if not out.is_dir():
        return
    if out.resolve() == src.parent.resolve() and (out / INFO_NAME).is_file():
        raise InputError(f"{out / INFO_NAME}: the import reads this tokens info and would replace it; "
                         f"choose another --out")
    recs = _records(out)
    own = _own(out, recs)
    foreign = [p for p in out.rglob("*.tar") if not p.name.startswith(".") and p not in own]
    if foreign:
        raise InputError(f"{out}: holds {len(foreign)} token shard(s) that no import-jsonl wrote (e.g. "
                         f"{foreign[0].relative_to(out)}), which training would mix with the import; choose "
                         "another --out (an import never removes other files)")
    if fresh:
        for p in own + [out / INFO_NAME] + [_record_path(out, q) for q in recs]:
            p.unlink(missing_ok=True)
        return
    if prefix in recs and recs[prefix] != str(src.resolve()):
        raise InputError(f"{out}: {prefix}-*.tar are the import of {recs[prefix]}, not of {src}; rename "
                         f"the file, choose another --out, or pass --fresh to replace the earlier imports")
    if own and (out / INFO_NAME).is_file():
        try:
            old = json.loads((out / INFO_NAME).read_text())
        except (OSError, UnicodeDecodeError, ValueError):
            old = None
        if not isinstance(old, dict):
            raise InputError(f"{out / INFO_NAME}: unreadable tokens info beside imported shards; pass --fresh "
                             "to replace the earlier imports")
        diff = differences({k: old[k] for k in FINGERPRINT if k in old}, {k: info[k] for k in FINGERPRINT if k in info})
        if diff:
            raise InputError(f"{out}: its imported shards have other tokens ({'; '.join(diff)}; see "
                             f"{out / INFO_NAME}); pass --fresh to replace them, or choose another --out")


def _remove_stale(out: Path, prefix: str, n_shards: int) -> None:
    # A rerun on a shorter file must not leave the earlier import's extra shards for training to read.
    pattern = re.compile(rf"{re.escape(prefix)}-(\d{{6}})\.tar")
    for p in out.glob(f"{prefix}-*.tar"):
        m = pattern.fullmatch(p.name)
        if m and int(m.group(1)) >= n_shards:
            p.unlink()


def _sequences(f, name: str, prefix: str, info: dict, warn: _Warner, st: Counter, advance):
    """(key, codes, meta) of every sequence of the open JSONL file `f`, counting lines/rows/images in `st`."""
    cpi, K = info["codes_per_image"], info["codebook_size"]
    for lineno, line in enumerate(f, 1):
        advance(len(line))
        st["lines"] += 1
        if not line.strip():
            continue
        try:
            codes = decode_row(line, cpi, K)
        except BadRow as bad:
            warn(lineno, bad)
            continue
        parts = split_images(codes)
        st["rows"] += 1
        st["rows_split"] += len(parts) > 1
        for part, chunk in enumerate(parts):
            st["sequences"] += 1
            st["images"] += len(chunk)
            meta = {"kind": "imported", "source": "jsonl", "jsonl": name, "line": lineno, "part": part,
                    "parts": len(parts), "codebook_size": K}
            yield f"{prefix}-{lineno:09d}-{part:02d}", chunk, meta


def import_jsonl(src, out, codes_per_image: int = 256, codebook_size: int | None = None,
                 shard_size: int = DEFAULT_SHARD_SIZE, progress: bool = True, fresh: bool = False) -> dict:
    """JSON lines `{"tokens": base64 of little-endian int32}` -> token shards in `out`; returns a summary.

    Line n of `src` (1-based) is one visual sequence: image i is tokens[i*cpi:(i+1)*cpi]. A row of more
    than MAX_IMAGES (16) images is split at image boundaries into consecutive sequences of at most 16.
    Sequence keys are `{file stem}-{n:09d}-{part:02d}`, shards `{out}/{file stem}-{j:06d}.tar` of
    `shard_size` sequences in line order, each written atomically; the same file always gives
    byte-identical shards, and a rerun replaces an earlier import of the same file (extra shards
    included). `{out}/tokens_info.json` is written last, once every shard is complete. Other files in
    `out` are never replaced or removed (`claim_out` says what is refused, and what `fresh` removes).

    Codebook size K: `codebook_size` if given; else the `codebook_size` of a `tokens_info.json` in the
    JSONL's folder (what `lvm data tokenize` writes beside its shards); else 8192, the released model's
    codebook. Such a tokens info that disagrees with a given `codebook_size` or with `codes_per_image` is
    an InputError (the data would be cut or checked wrongly); otherwise its other fields (tokenizer,
    resolution, ...) are carried into the output's tokens info.

    Bad lines (bad JSON, no "tokens" string, bad base64, no tokens, a length that is not whole images,
    ids < 0 or >= K) are skipped with a stderr warning naming `src:line` and counted per reason in
    the summary; blank lines are ignored. A file with no good line is an InputError.
    """
    from tqdm import tqdm

    src, out = Path(src), Path(out)
    if not src.is_file():
        raise InputError(f"{src}: no such JSONL file")
    if shard_size < 1:
        raise InputError(f"shard size {shard_size} must be >= 1")
    info = resolve_info(src, codes_per_image, codebook_size)
    prefix, warn, st, buf = _key_prefix(src), _Warner(src), Counter(), []
    claim_out(src, out, prefix, info, fresh)
    t0 = time.perf_counter()

    def flush():
        if not st["shards"]:  # recorded before its first shard: a killed import's rerun may replace them
            atomic_write_text(_record_path(out, prefix), json.dumps({"jsonl": str(src.resolve())}) + "\n")
        write_token_shard(out / f"{prefix}-{st['shards']:06d}.tar", buf)
        st["shards"] += 1
        buf.clear()

    with open(src, "rb") as f, tqdm(total=src.stat().st_size, unit="B", unit_scale=True,
                                    disable=not progress, dynamic_ncols=True) as bar:
        for item in _sequences(f, src.name, prefix, info, warn, st, bar.update):
            buf.append(item)
            if len(buf) >= shard_size:
                flush()
    skipped = sum(warn.counts.values())
    if not st["sequences"]:
        raise InputError(f"{src}: no importable rows ({st['lines']} lines, {skipped} bad)")
    if buf:
        flush()
    _remove_stale(out, prefix, st["shards"])
    write_tokens_info(out, info, check=False)  # claim_out checked it before the first shard
    return {"lines": st["lines"], "rows": st["rows"], "rows_split": st["rows_split"],
            "sequences": st["sequences"], "images": st["images"], "shards": st["shards"],
            "skipped": skipped, "skipped_by_reason": dict(sorted(warn.counts.items())),
            "codebook_size": info["codebook_size"], "codes_per_image": info["codes_per_image"],
            "out": str(out), "seconds": round(time.perf_counter() - t0, 3)}
