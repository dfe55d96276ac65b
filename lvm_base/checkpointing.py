"""Checkpoint directories of both trainers: `root/step-N/` written whole by every rank
(`save_state_atomic`), listed, pruned, loaded back (`load_state_safe`).

The trainers keep their own layouts (lvm/train/resume.py: `checkpoints/step-%08d/` with an HF export, an
accelerate `state/` folder and trainer_state.json; tokenizer/train.py: `ckpt/step-%07d/`, see its
docstring); this module only holds what they do alike.

Several processes (DDP, FSDP): `save_state_atomic` / `load_state_safe` wrap accelerate's
`save_state` / `load_state` so that every rank writes its part (sharded FSDP model/optimizer state, its
own RNG file) into one temporary directory that the main process then renames into place: a kill during
a save never leaves a `step-N/` that a resume would pick. All ranks must see the same directory (one
machine, or a shared filesystem).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from .errors import InputError

__all__ = ["list_step_dirs", "prune_step_dirs", "save_state_atomic", "load_state_safe",
           "read_json_object", "check_state", "safetensors_shapes", "shapes", "STATE_DIR"]

STATE_DIR = "state"  # accelerate's save_state folder inside a checkpoint directory


def read_json_object(path: Path, what: str = "config") -> dict:
    """The JSON object in `path`; a one-line InputError naming the file when it is unreadable, not UTF-8,
    not JSON or not an object (a list, a number)."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except OSError as e:
        raise InputError(f"{path}: cannot read {what} ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: {what} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset "
                         f"{e.start})") from None
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: {what} is not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise InputError(f"{path}: {what} must be a JSON object, got a {type(d).__name__}")
    return d


def shapes(state: dict) -> dict:
    """name -> shape tuple of a state dict (tensors or safetensors slices)."""
    return {k: tuple(v.shape if hasattr(v, "shape") else v.get_shape()) for k, v in state.items()}


def _show(keys: list, n: int = 20) -> str:
    return ", ".join(keys[:n]) + (f" ... (+{len(keys) - n} more)" if len(keys) > n else "") if keys else "none"


def check_state(expected: dict, got: dict, source, ignore_missing=(), ignore_unexpected=()) -> None:
    """One strict check of checkpoint tensors against a model, both as name -> shape: an InputError naming
    `source` and the first missing, unexpected or mis-shaped names. Names in `ignore_missing` (tied copies)
    and `ignore_unexpected` (buffers that older libraries saved and the model recomputes) are allowed."""
    missing = sorted(k for k in expected if k not in got and k not in ignore_missing)
    unexpected = sorted(k for k in got if k not in expected and k not in ignore_unexpected)
    if missing or unexpected:
        raise InputError(f"{source}: checkpoint does not match the model config: missing keys: {_show(missing)}; "
                         f"unexpected keys: {_show(unexpected)}")
    mism = sorted(k for k in expected if k in got and tuple(got[k]) != tuple(expected[k]))
    if mism:
        k = mism[0]
        raise InputError(f"{source}: shape mismatch for {k}: checkpoint {tuple(got[k])} vs model "
                         f"{tuple(expected[k])} ({len(mism)} mismatched tensors)")


def safetensors_shapes(paths) -> dict:
    """name -> shape of every tensor in the safetensors file(s) `paths`, from the headers alone; a truncated
    or foreign file is a one-line InputError naming it (safetensors checks that the header covers the file)."""
    from safetensors import safe_open

    out = {}
    for path in [paths] if isinstance(paths, (str, os.PathLike)) else paths:
        try:
            with safe_open(str(path), framework="pt") as f:
                out.update({k: tuple(f.get_slice(k).get_shape()) for k in f.keys()})
        except Exception as e:  # SafetensorError (bad header, truncated file) derives from Exception only
            raise InputError(f"{path}: not a readable safetensors file ({str(e).splitlines()[0][:200]})") from None
    return out


def list_step_dirs(root, marker: str) -> list[Path]:
    """The complete checkpoints `root/step-*/` (those holding `marker`), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step-*") if p.is_dir() and (p / marker).is_file())


def prune_step_dirs(root, marker: str, keep: list[str]) -> None:
    """Remove the complete checkpoints under `root` whose names are not in `keep`."""
    for old in list_step_dirs(root, marker):
        if old.name not in keep:
            shutil.rmtree(old, ignore_errors=True)


def temp_dir_for(final) -> Path:
    """The temporary directory a save of `final` writes into (hidden, beside it; never matches step-*)."""
    final = Path(final)
    return final.parent / f".{final.name}.tmp"


def _publish(tmp: Path, final: Path) -> None:
    """Rename the finished `tmp` into place (replacing an older `final`), its files given normal modes
    (safetensors and torch.save write private ones)."""
    from .files import give_normal_modes

    give_normal_modes(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def save_state_atomic(accelerator, final_dir, write_extra=None, state_dir: str = STATE_DIR) -> Path:
    """`accelerator.save_state` into `final_dir/state_dir`, atomically across all ranks. Call on every rank.

    1. the main process creates a fresh `.NAME.tmp/` beside `final_dir` (dropping what a killed save left);
       everyone waits;
    2. every rank runs `accelerator.save_state(tmp/state_dir, safe_serialization=True)`: optimizer,
       scheduler, grad scaler, registered objects (main process), this rank's RNG file
       (`random_states_<rank>.pkl`) and, under FSDP, the model and optimizer shards of every rank
       (torch.distributed.checkpoint, with fsdp_state_dict_type SHARDED_STATE_DICT);
    3. `write_extra(tmp)` runs on every rank (it may call collectives, e.g. `accelerator.get_state_dict`);
       shared files come from the main process (per-rank files, distinctly named, from each rank),
       and the completeness marker is written last;
    4. everyone waits; the main process renames tmp to `final_dir`; everyone waits again.

    Returns `final_dir`. A kill at any point leaves at most the hidden tmp directory, which the next save
    of that step replaces.
    """
    final = Path(final_dir)
    tmp = temp_dir_for(final)
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp / state_dir), safe_serialization=True)
        if write_extra is not None:
            write_extra(tmp)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            _publish(tmp, final)
    except BaseException:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    accelerator.wait_for_everyone()
    return final


def _why(e: BaseException) -> str:
    """The telling part of a load error, in one short line: torch's weights_only refusal is a paragraph of
    advice to load the file unsafely, of which only the refused global matters."""
    text = " ".join(str(e).split()) or type(e).__name__
    refused = re.search(r"Unsupported global: GLOBAL (\S+)", text) or re.search(r"Unsupported operand (\S+)", text)
    if refused:
        return (f"it calls {refused.group(1)}, which a file of tensors and numbers never does: it may have been "
                "tampered with")
    return re.split(r"(?<=\.) ", text, maxsplit=1)[0][:200]


def check_weights_only(path, plain: bool = False) -> object:
    """What the torch pickle `path` holds, loaded with weights_only=True (tensors, numbers, containers and,
    unless `plain`, the numpy RNG-state types that accelerate allows), storages memory-mapped so that a large
    optimizer state is not read twice; a one-line InputError naming the file if it holds anything else
    or is not a torch file.

    accelerate 1.16 reads registered objects (`custom_checkpoint_<i>.pkl`) with weights_only=False: those
    are checked `plain`, and a file that the restricted unpickler accepts names only allow-listed callables,
    so the full load that follows runs nothing else."""
    import torch
    from accelerate.utils import load as accelerate_load

    def load(**kw):
        if plain:
            return torch.load(path, map_location="cpu", weights_only=True, **kw)
        return accelerate_load(path, map_location="cpu", weights_only=True, **kw)

    try:
        try:
            return load(mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            return load()  # a file of torch's legacy format cannot be memory-mapped
    except Exception as e:
        raise InputError(f"{path}: refused to load ({_why(e)})") from None


def check_rng_file(path) -> None:
    """One-line InputError unless `path` is an RNG-state file as accelerate writes it (python, numpy and torch
    states that their setters accept): accelerate swallows any error in restoring RNGs, so a damaged file
    would resume silently with other random streams. Tried on fresh generators, not the global ones."""
    import random

    import numpy as np
    import torch

    st = check_weights_only(path)
    try:
        random.Random().setstate(st["random_state"])
        np.random.RandomState().set_state(st["numpy_random_seed"])
        torch.Generator().set_state(st["torch_manual_seed"])
        for k, v in st.items():
            if k.startswith("torch_") and k != "torch_manual_seed":  # accelerator RNGs: per-device byte tensors
                if not all(isinstance(t, torch.Tensor) and t.dtype == torch.uint8 for t in v):
                    raise TypeError(f"{k} is not a list of byte tensors")
    except Exception as e:
        raise InputError(f"{path}: not a valid RNG-state file ({type(e).__name__}: {_why(e)})") from None


def load_state_safe(accelerator, state_dir, saved_world: int | None = None) -> None:
    """`accelerator.load_state(state_dir)` (call on every rank) after checking every file it would read.

    What accelerate 1.16 does on load: optimizer, scheduler, scaler, sampler and RNG files go through
    `accelerate.utils.load` (torch.load with weights_only=True plus numpy's array reconstructors), but a
    refusal ends in a multi-line traceback; registered objects load with weights_only=False; an RNG file
    that fails to load is skipped without a word. So first, every torch file here is loaded with
    weights_only=True (registered objects without the numpy allowance) and this rank's RNG file is
    validated and required (when the checkpoint's `saved_world` had this rank; rank 0 always when it is not
    given): any problem is a one-line InputError naming the file. Model safetensors are checked for a
    readable header. FSDP shards go through torch.distributed.checkpoint (tensors via weights_only loads,
    its `.metadata` file via plain pickle: only resume from checkpoint directories you trust).
    """
    state_dir = Path(state_dir)
    rank = accelerator.process_index
    for f in sorted(state_dir.iterdir()):
        if f.is_file() and f.suffix in (".bin", ".pkl", ".pt") and not f.name.startswith("random_states_"):
            check_weights_only(f, plain=f.name.startswith("custom_checkpoint_"))
        elif f.is_file() and f.suffix == ".safetensors":
            safetensors_shapes(f)
    rng = state_dir / f"random_states_{rank}.pkl"
    if rng.is_file():
        check_rng_file(rng)
    elif rank < (saved_world if saved_world is not None else 1):
        raise InputError(f"{state_dir}: {rng.name} is missing, so this rank's random streams cannot be restored")
    accelerator.load_state(str(state_dir))
