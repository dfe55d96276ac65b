"""Stage 2: image-sequence shards -> token shards (tokens.npy (n_images, codes_per_image) + json per sequence).

Each input shard becomes one token shard of the same name under the output folder; a token shard exists
only once complete (atomic write), so a rerun skips finished ones. Shards are split by rank
(`shards[rank::world]`, rank/world from `accelerate launch` / torchrun / SLURM environment), and images of
many sequences are batched together through the tokenizer, on the device and in the precision that the
hardware policy (`tokenizer.common.hardware.resolve`) gives for `device`/`precision` (auto: this rank's GPU if
any; bf16 only where the hardware computes it natively, else fp32). This is the local engine; `engines.py`
runs the same `tokenize_shard` on a pool of Ray actors, one tokenizer each (`--engine ray`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from tokenizer.common.errors import InputError
from tokenizer.common.files import atomic_path, atomic_write_text

from .config import dist_env
from .sequence import sample_images, sample_meta
from .shards import token_sample, TarShardWriter
from tokenizer.tar import iter_tar_samples, list_shards


TOKENS_INFO = "tokens_info.json"  # what the tokenizer was, beside every token shard folder

def _relative_name(shard: Path, roots: list[Path]) -> str:
    for r in roots:
        if r.is_dir():
            try:
                return str(shard.relative_to(r))
            except ValueError:
                pass
    return shard.name


def tokenize_shard(tok, shard: Path, out_path: Path, batch_size: int = 64, tokenizer_name: str = "") -> dict:
    samples = [s for s in iter_tar_samples(shard) if "json" in s]
    metas = [sample_meta(s) for s in samples]
    images, counts = [], []
    for s in samples:
        ims = sample_images(s)
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
    return {"sequences": len(samples), "images": n}


def plan_tokenize(shards, out) -> tuple[list[Path], list[tuple[Path, Path]]]:
    """(every input shard, [(input shard, its token shard)] in the same order): the same list on every rank."""
    spec_roots = [Path(s) for s in ([shards] if isinstance(shards, (str, Path)) else shards)]
    all_shards = [s for s in list_shards(shards) if not s.name.startswith(".")]
    out = Path(out)
    return all_shards, [(s, out / _relative_name(s, spec_roots)) for s in all_shards]


def tokens_info(tok, tokenizer_path) -> dict:
    """What `{out}/tokens_info.json` records about the tokenizer."""
    return {"tokenizer": str(tokenizer_path), "codebook_size": int(tok.codebook_size),
            "codes_per_image": int(tok.codes_per_image), "resolution": int(tok.resolution),
            "value_range": list(tok.value_range), "resize_mode": tok.resize_mode}


def write_tokens_info(out, info: dict) -> None:
    atomic_write_text(Path(out) / TOKENS_INFO, json.dumps(info, indent=1))


def summary(done: int, skipped: int, seqs: int, imgs: int, dt: float) -> dict:
    """The summary `tokenize` returns (and `lvm data tokenize` prints as JSON), whichever engine ran."""
    return {"shards_done": done, "shards_skipped": skipped, "sequences": seqs, "images": imgs,
            "seconds": round(dt, 3), "images_per_s": round(imgs / dt, 2) if dt > 0 else 0.0}


def tokenize(shards, tokenizer_path, out, batch_size: int = 64, device: str | None = "auto",
             precision: str | None = "auto", rank: int | None = None, world: int | None = None,
             progress: bool = True, log=print) -> dict:
    from tqdm import tqdm

    from tokenizer import load_tokenizer
    from tokenizer.common.hardware import resolve

    resolve(device, precision, "inference")  # a device that is not there ends here, before any output
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
    if rank == 0:
        write_tokens_info(out, tokens_info(tok, tokenizer_path))
    log(f"rank {rank}/{world}: {len(mine)} of {len(all_shards)} shards, {len(mine) - len(todo)} already done, "
        f"tokenizer K={tok.codebook_size} on {plan.device} in {plan.precision}")
    t0 = time.perf_counter()
    seqs = imgs = 0
    bar = tqdm(todo, unit="shard", disable=not progress, dynamic_ncols=True)
    for shard, o in bar:
        st = tokenize_shard(tok, shard, o, batch_size, str(tokenizer_path))
        seqs += st["sequences"]
        imgs += st["images"]
        bar.set_postfix(seq=seqs, img=imgs)
    return summary(len(todo), len(mine) - len(todo), seqs, imgs, time.perf_counter() - t0)


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
