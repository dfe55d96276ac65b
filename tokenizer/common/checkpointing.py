"""Checkpoint directories of both trainers: `root/step-N/` written whole by every rank
(`save_state_atomic`), listed, pruned, loaded back (`load_state_safe`, or `load_train_state` for the
earlier single-file layout).

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

import os
import shutil
from pathlib import Path

from .rng import set_rng_state

__all__ = ["list_step_dirs", "prune_step_dirs", "load_train_state",
           "save_state_atomic", "load_state_safe", "STATE_DIR"]

STATE_DIR = "state"  # accelerate's save_state folder inside a checkpoint directory


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


def load_train_state(path) -> dict:
    """A train-state file of the earlier single-file layout (weights_only=True, on the CPU: its tensors plus
every RNG under "rng"), with the RNGs restored."""
    import torch

    st = torch.load(path, map_location="cpu", weights_only=True)
    set_rng_state(st["rng"])
    return st


def temp_dir_for(final) -> Path:
    """The temporary directory a save of `final` writes into (hidden, beside it; never matches step-*)."""
    final = Path(final)
    return final.parent / f".{final.name}.tmp"


def _publish(tmp: Path, final: Path) -> None:
    """Rename the finished `tmp` into place (replacing an older `final`)."""
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


def check_weights_only(path) -> None:
    """Raise unless the torch pickle `path` loads with weights_only=True (tensors, numbers, containers).

    accelerate 1.15 reads registered objects (`custom_checkpoint_<i>.pkl`) with weights_only=False; a
    file that the restricted unpickler accepts only names allow-listed callables, so the full load that
    follows runs nothing else.
    """
    import torch

    torch.load(path, map_location="cpu", weights_only=True)


def load_state_safe(accelerator, state_dir) -> None:
    """`accelerator.load_state(state_dir)` (call on every rank) after checking the pickles it would read
    without weights_only.

    What accelerate 1.15 does on load: optimizer, scheduler, scaler and RNG files go through
    `accelerate.utils.load` (torch.load with weights_only=True plus numpy's array reconstructors);
    models as safetensors; registered objects with weights_only=False (checked here first with
    weights_only=True); FSDP shards through torch.distributed.checkpoint (tensors via weights_only
    loads, its `.metadata` file via plain pickle: only resume from checkpoint directories you trust).
    A missing RNG file (e.g. more ranks than were saved) is skipped by accelerate without an error.
    """
    state_dir = Path(state_dir)
    for f in sorted(state_dir.glob("custom_checkpoint_*.pkl")):
        check_weights_only(f)
    accelerator.load_state(str(state_dir))
