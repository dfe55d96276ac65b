"""Checkpoint directories of both trainers: `root/step-N/` written whole (atomic_dir), listed, pruned,
and a train-state file holding optimizer/scheduler state and every RNG.

The trainers keep their own layouts (lvm/train/resume.py: `checkpoints/step-%08d/` with
trainer_state.pt + trainer_state.json; tokenizer/train.py: `ckpt/step-%07d/` with train_state.pt and a
`latest` pointer); this module only holds what they do alike.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .files import atomic_dir
from .rng import rng_state, set_rng_state

__all__ = ["atomic_dir", "list_step_dirs", "prune_step_dirs", "save_train_state", "load_train_state"]


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


def save_train_state(path, state: dict) -> None:
    """torch.save `state` (tensors and numbers only) plus every RNG's state under "rng"."""
    import torch

    torch.save({**state, "rng": rng_state()}, path)


def load_train_state(path) -> dict:
    """What `save_train_state` wrote (weights_only=True, on the CPU), with the RNGs restored."""
    import torch

    st = torch.load(path, map_location="cpu", weights_only=True)
    set_rng_state(st["rng"])
    return st
