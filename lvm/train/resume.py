"""Checkpoints of `lvm train` (layout in lvm/train/loop.py's docstring), on tokenizer.common.checkpointing.

    checkpoints/step-00000100/   HF directory (config.json, model.safetensors) + trainer_state.pt
                                 (optimizer, scheduler, RNG) + trainer_state.json (step, data position)
"""

from __future__ import annotations

import json
from pathlib import Path

from lvm.model import quiet_hf_progress
from tokenizer.common.checkpointing import (atomic_dir, list_step_dirs, load_train_state, prune_step_dirs,
                                            save_train_state)

MARKER = "trainer_state.json"  # written last inside the directory: its presence marks a complete checkpoint


def list_checkpoints(out_dir) -> list[Path]:
    """The run's complete checkpoints, oldest first."""
    return list_step_dirs(Path(out_dir) / "checkpoints", MARKER)


def save_checkpoint(accelerator, model, optimizer, scheduler, out_dir, state: dict, keep_last: int) -> Path:
    """Write checkpoints/step-N/ (N = state["step"]) atomically, then keep only the newest `keep_last`."""
    root = Path(out_dir) / "checkpoints"
    final = root / f"step-{state['step']:08d}"
    full_state = accelerator.get_state_dict(model)  # collective under FSDP: every rank calls it
    if accelerator.is_main_process:
        with atomic_dir(final) as tmp, quiet_hf_progress():  # HF's one-shard bar would litter every save
            accelerator.unwrap_model(model).save_pretrained(tmp, state_dict=full_state, safe_serialization=True)
            # Optimizer/scheduler/RNG: tensors and numbers only, loaded back with weights_only=True.
            save_train_state(tmp / "trainer_state.pt", {"optimizer": optimizer.state_dict(),
                                                        "scheduler": scheduler.state_dict()})
            (tmp / MARKER).write_text(json.dumps(state, indent=1))
        prune_step_dirs(root, MARKER, [p.name for p in list_checkpoints(out_dir)[-keep_last:]])
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(ckpt: Path, optimizer, scheduler) -> dict:
    """Restore optimizer, scheduler and RNGs from `ckpt`; returns its trainer_state.json."""
    st = load_train_state(ckpt / "trainer_state.pt")
    optimizer.load_state_dict(st["optimizer"])
    scheduler.load_state_dict(st["scheduler"])
    return json.loads((ckpt / MARKER).read_text())
