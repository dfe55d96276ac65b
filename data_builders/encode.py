"""Stage 2: image-sequence shards -> token shards (tokens.npy (n_images, codes_per_image) + json per sequence).

Each input shard becomes one token shard of the same name under the output folder; a token shard exists
only once complete (atomic write), so a rerun skips finished ones. Shards are split by rank
(`shards[rank::world]`, rank/world from `accelerate launch` / torchrun / SLURM environment), and images of
many sequences are batched together through the tokenizer, on the device and in the precision that the
hardware policy (`lvm_base.hardware.resolve`) gives for `device`/`precision` (auto: this rank's GPU if
any; bf16 only where the hardware computes it natively, else fp32). This is the local engine; `engines.py`
runs the same `tokenize_shard` on a pool of Ray actors, one tokenizer each (`--engine ray`).

`{out}/tokens_info.json` records the tokenizer that made the folder's token shards (its codebook size,
resolution, ... and a hash of its weights): a rerun with another tokenizer is an InputError naming what
differs, since skipping the finished shards would mix two tokenizers' codes in one folder; `start_fresh`
removes this command's own outputs for a new tokenizer.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

from lvm_base.errors import InputError
from lvm_base.files import atomic_path, atomic_write_text

from .config import dist_env
from .preview import decode_sample
from .shards import differences, token_sample, TarShardWriter
from lvm_base.tar import iter_tar_samples, list_shards


TOKENS_INFO = "tokens_info.json"  # what the tokenizer was, beside every token shard folder
# The fields of a tokens info that shape the codes: two tokenizers that differ in one make shards that must
# not share a folder. The tokenizer's path is not one (the same weights may be named two ways).
FINGERPRINT = ("codebook_size", "codes_per_image", "resolution", "value_range", "resize_mode", "tokenizer_sha256")

def _relative_name(shard: Path, roots: list[Path]) -> str:
    for r in roots:
        if r.is_dir():
            try:
                return str(shard.relative_to(r))
            except ValueError:
                pass
    return shard.name


def tokenize_shard(tok, shard: Path, out_path: Path, batch_size: int = 64, tokenizer_name: str = "") -> dict:
    samples, metas, images, counts, bad = [], [], [], [], 0
    for s in iter_tar_samples(shard):
        if "json" not in s:
            continue
        try:
            meta, ims = decode_sample(s, shard)
        except InputError as e:  # an undecodable image or JSON: this sequence is skipped and counted
            bad += 1
            print(f"warning: {e}; skipped", file=sys.stderr)
            continue
        samples.append(s)
        metas.append(meta)
        images += ims
        counts.append(len(ims))
    codes = tok.encode_images(images, batch_size=batch_size).cpu().numpy() if images else np.zeros((0, 0))
    n = 0
    with TarShardWriter(out_path) as w:
        for s, meta, c in zip(samples, metas, counts):
            meta = {**meta, "tokenizer": tokenizer_name, "codebook_size": int(tok.codebook_size),
                    "image_shard": shard.name}
            w.write(token_sample(s["__key__"], codes[n:n + c], meta))
            n += c
    return {"sequences": len(samples), "images": n, "sequences_skipped": bad}


def plan_tokenize(shards, out) -> tuple[list[Path], list[tuple[Path, Path]]]:
    """(every input shard, [(input shard, its token shard)] in the same order): the same list on every rank.
    An output that is one of the input shards (`--out` = the image folder) is an InputError."""
    spec_roots = [Path(s) for s in ([shards] if isinstance(shards, (str, Path)) else shards)]
    all_shards = [s for s in list_shards(shards) if not s.name.startswith(".")]
    out = Path(out)
    pairs = [(s, out / _relative_name(s, spec_roots)) for s in all_shards]
    inputs = {s.resolve() for s in all_shards}
    for s, o in pairs:
        if o.resolve() in inputs:
            raise InputError(f"{o}: this token shard would be written over the input shard of that name; "
                             f"choose an --out outside the image shards")
    return all_shards, pairs


def tokenizer_digest(tokenizer_path) -> str:
    """sha256 of the tokenizer's weight file(s), the ones `load_tokenizer` reads: a tokenizer retrained at
    the same path is another tokenizer. "" when there is no such file to read."""
    from lvm_base.hub import resolve_checkpoint

    p = resolve_checkpoint(tokenizer_path, "tokenizer")
    if p.is_file():
        files = [p]
    else:
        files = next((f for f in ([p / "model.safetensors"], [p / "pytorch_model.bin"], sorted(p.glob("*.ckpt")),
                                  sorted(p.glob("checkpoints/*.ckpt"))) if f and f[0].is_file()), [])
    if not files:
        return ""
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


def tokens_info(tok, tokenizer_path) -> dict:
    """What `{out}/tokens_info.json` records about the tokenizer."""
    return {"tokenizer": str(tokenizer_path), "codebook_size": int(tok.codebook_size),
            "codes_per_image": int(tok.codes_per_image), "resolution": int(tok.resolution),
            "value_range": list(tok.value_range), "resize_mode": tok.resize_mode,
            "tokenizer_sha256": tokenizer_digest(tokenizer_path)}


def _token_shards(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*.tar") if not p.name.startswith(".")) if out.is_dir() else []


def check_tokens_info(out, info: dict) -> None:
    """InputError when `out` holds token shards that a tokenizer other than `info`'s made (its
    tokens_info.json differs in a FINGERPRINT field). A folder without one has nothing to compare with."""
    out = Path(out)
    record = out / TOKENS_INFO
    if not record.is_file() or not _token_shards(out):
        return
    try:
        old = json.loads(record.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{record}: unreadable tokens info ({e}); --fresh removes the token shards it "
                         "describes") from None
    if not isinstance(old, dict):
        raise InputError(f"{record}: tokens info must be a JSON object; --fresh removes the token shards it describes")
    diff = differences({k: old[k] for k in FINGERPRINT if k in old}, {k: info[k] for k in FINGERPRINT if k in info})
    if diff:
        raise InputError(f"{out}: its token shards were made by another tokenizer ({'; '.join(diff)}; see "
                         f"{record}): rerun with --fresh to remove them and tokenize again, or choose another --out")


def write_tokens_info(out, info: dict, check: bool = True) -> None:
    """Write `{out}/tokens_info.json`, after `check_tokens_info` unless `check` is False."""
    if check:
        check_tokens_info(out, info)
    atomic_write_text(Path(out) / TOKENS_INFO, json.dumps(info, indent=1))


def _made_by_tokenize(path: Path) -> bool:
    """Whether a token shard is an output of `tokenize_shard` (its samples name their image shard)."""
    try:
        first = next(iter(iter_tar_samples(path)), None)
        meta = json.loads(first.get("json", b"{}")) if first is not None else None
        return isinstance(meta, dict) and "image_shard" in meta
    except (InputError, ValueError):
        return False


def start_fresh(shards, tokenizer_path, out, rank: int | None = None, world: int | None = None) -> int:
    """`lvm data tokenize --fresh`: remove this command's own outputs in `out` and record the tokenizer at
    `tokenizer_path` as the folder's; returns the number of token shards removed.

    Each rank removes its own token shards of the plan, rank 0 also the other token shards in `out` that
    `tokenize_shard` wrote (ranks that start at different times never remove each other's new shards);
    any other file stays. The tokens info is written here, by every rank, so that no rank's check meets
    the old one beside shards that another rank has yet to remove."""
    from tokenizer import load_tokenizer

    _, pairs = plan_tokenize(shards, out)  # a spec that names no shards ends here, before anything is removed
    env_rank, env_world = dist_env()
    rank = env_rank if rank is None else rank
    world = env_world if world is None else world
    out = Path(out)
    if not out.is_dir():
        return 0
    info = tokens_info(load_tokenizer(tokenizer_path, device="cpu"), tokenizer_path)
    removed = 0
    for _, o in pairs[rank::world]:
        for stale in o.parent.glob(f".{o.stem}.*.tmp*"):  # what a killed run of this shard left
            stale.unlink(missing_ok=True)
        if o.is_file():
            o.unlink()
            removed += 1
    if rank == 0:
        planned = {o.resolve() for _, o in pairs}
        for p in _token_shards(out):
            if p.resolve() not in planned and _made_by_tokenize(p):
                p.unlink()
                removed += 1
    write_tokens_info(out, info, check=False)
    return removed


def summary(done: int, skipped: int, seqs: int, imgs: int, dt: float, bad: int = 0) -> dict:
    """The summary `tokenize` returns (and `lvm data tokenize` prints as JSON), whichever engine ran; `bad`:
    the sequences skipped as unreadable."""
    return {"shards_done": done, "shards_skipped": skipped, "sequences": seqs, "images": imgs,
            "seconds": round(dt, 3), "images_per_s": round(imgs / dt, 2) if dt > 0 else 0.0,
            "sequences_skipped": bad}


def tokenize(shards, tokenizer_path, out, batch_size: int = 64, device: str | None = "auto",
             precision: str | None = "auto", rank: int | None = None, world: int | None = None,
             progress: bool = True, log=print) -> dict:
    from tqdm import tqdm

    from tokenizer import load_tokenizer
    from lvm_base.hardware import resolve

    resolve(device, precision, "inference")  # a device that is not there ends here, before any output
    if batch_size < 1:
        raise InputError(f"batch size {batch_size} must be >= 1")
    env_rank, env_world = dist_env()
    rank = env_rank if rank is None else rank
    world = env_world if world is None else world
    if not 0 <= rank < world:
        raise InputError(f"rank {rank} is not in [0, world size {world})")
    all_shards, pairs = plan_tokenize(shards, out)
    mine = pairs[rank::world]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    todo = [(s, o) for s, o in mine if not o.is_file()]
    tok = load_tokenizer(tokenizer_path, device=device, precision=precision).eval()
    plan = tok.inference_plan()
    info = tokens_info(tok, tokenizer_path)
    check_tokens_info(out, info)  # on every rank: each skips its own finished shards
    if rank == 0:
        write_tokens_info(out, info, check=False)
    log(f"rank {rank}/{world}: {len(mine)} of {len(all_shards)} shards, {len(mine) - len(todo)} already done, "
        f"tokenizer K={tok.codebook_size} on {plan.device} in {plan.precision}")
    t0 = time.perf_counter()
    seqs = imgs = bad = 0
    bar = tqdm(todo, unit="shard", disable=not progress, dynamic_ncols=True)
    for shard, o in bar:
        st = tokenize_shard(tok, shard, o, batch_size, str(tokenizer_path))
        seqs += st["sequences"]
        imgs += st["images"]
        bad += st["sequences_skipped"]
        bar.set_postfix(seq=seqs, img=imgs)
    return summary(len(todo), len(mine) - len(todo), seqs, imgs, time.perf_counter() - t0, bad)


def export_jsonl(tokens, out, progress: bool = True) -> int:
    """Token shards -> JSON lines `{"tokens": base64 of the int32 array (n_images * codes_per_image,)}`
    (the original LVM format)."""
    import base64

    from tqdm import tqdm

    from .shards import iter_token_shard

    n = 0
    out = Path(out)
    with atomic_path(out) as tmp, open(tmp, "w") as f:
        for shard in tqdm(list_shards(tokens), unit="shard", disable=not progress):
            for key, codes, meta in iter_token_shard(shard):
                arr = np.ascontiguousarray(codes.reshape(-1).astype("<i4"))
                f.write(json.dumps({"tokens": base64.b64encode(arr.tobytes()).decode("ascii")}) + "\n")
                n += 1
    return n
