"""Checkpoints of `lvm train`, on accelerate's state machinery (lvm_base.checkpointing).

    checkpoints/step-00000100/
        config.json, generation_config.json, model.safetensors
                             HF export of the full model (fp32; LlamaForCausalLM.from_pretrained(step_dir));
                             generation_config keeps plain generate() in the token contract (ids < K)
        README.md            model card: what the model is, its contract, how it was trained and is prompted
        state/               accelerator.save_state, written by every rank:
            optimizer.bin, scheduler.bin     optimizer / lr schedule (DDP: replicated, written by rank 0)
            random_states_<rank>.pkl         every rank's RNGs (python, numpy, torch, CUDA)
            custom_checkpoint_0.pkl          the run's progress (step, data position: Run.state_dict)
            scaler.pt                        fp16 grad scaler, when there is one
            pytorch_model_fsdp_0/, optimizer_0/
                             FSDP only: each rank's shard of the model and optimizer state
                             (torch.distributed.checkpoint; configs/accelerate/fsdp.yaml asks for
                             SHARDED_STATE_DICT)
        trainer_state.json   step, data position, world size: written last, marks a complete checkpoint

Without FSDP the model weights are saved once, as the HF export (a save hook keeps accelerate from
writing a second copy, a load hook from reading one: the resumed model is built from the export).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from lvm.model import generation_config, save_hf
from lvm.tokens import TokenLayout
from lvm.train.card import model_card
from lvm_base.checkpointing import (STATE_DIR, list_step_dirs, load_state_safe, prune_step_dirs, read_json_object,
                                    save_state_atomic)
from lvm_base.errors import InputError

MARKER = "trainer_state.json"  # written last inside the directory: its presence marks a complete checkpoint


def list_checkpoints(out_dir) -> list[Path]:
    """The run's complete checkpoints, oldest first."""
    return list_step_dirs(Path(out_dir) / "checkpoints", MARKER)


def is_fsdp(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


def attach(accelerator, progress) -> None:
    """Register what accelerate's save_state/load_state should carry besides model/optimizer/scheduler:
    `progress` (an object with state_dict/load_state_dict: step and data position) and, without FSDP,
    the hooks that leave the model weights to the HF export."""
    accelerator.register_for_checkpointing(progress)
    if not is_fsdp(accelerator):
        accelerator.register_save_state_pre_hook(lambda models, weights, out: weights.clear())
        accelerator.register_load_state_pre_hook(lambda models, inp: models.clear())


def save_checkpoint(accelerator, model, out_dir, state: dict, keep_last: int, cfg=None) -> Path:
    """Write checkpoints/step-N/ (N = state["step"]) atomically from every rank, then keep only the
    newest `keep_last`. Call on every rank. The HF export carries the token contract's
    generation_config.json and, given the run's TrainConfig `cfg`, a model card (README.md)."""
    root = Path(out_dir) / "checkpoints"
    final = root / f"step-{state['step']:08d}"

    def write_extra(tmp: Path):
        full_state = accelerator.get_state_dict(model)  # collective under FSDP: every rank calls it
        if accelerator.is_main_process:
            hf = accelerator.unwrap_model(model)
            # Also a model fine-tuned from the release: its saved bos/eos defaults (1, 2) are image codes.
            hf.generation_config = generation_config(TokenLayout.from_model_config(hf.config))
            save_hf(hf, tmp, state_dict=full_state, safe_serialization=True)
            if cfg is not None:
                n_params = sum(v.numel() for v in full_state.values())
                (tmp / "README.md").write_text(model_card(cfg, state, hf.config, n_params))
            (tmp / MARKER).write_text(json.dumps({**state, "world_size": accelerator.num_processes}, indent=1))

    save_state_atomic(accelerator, final, write_extra)
    if accelerator.is_main_process:
        prune_step_dirs(root, MARKER, [p.name for p in list_checkpoints(out_dir)[-keep_last:]])
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, ckpt: Path, progress) -> dict:
    """Restore the prepared optimizer and scheduler, the RNGs and `progress` (registered by `attach`) from
    `ckpt`'s state/ (every rank); returns trainer_state.json.

    The model itself was built from the checkpoint's HF export (and, under FSDP, is overwritten here by
    the sharded state).
    """
    meta = read_json_object(ckpt / MARKER, "trainer state")
    saved_world, step = meta.get("world_size"), meta.get("step")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= lo for v, lo in ((saved_world, 1), (step, 0))):
        raise InputError(f"{ckpt / MARKER}: world_size and step must be integers (>= 1, >= 0), got "
                         f"{saved_world!r}, {step!r}")
    if saved_world != accelerator.num_processes:
        warnings.warn(f"{ckpt} was written by {saved_world} process(es), this run has "
                      f"{accelerator.num_processes}: the data order (and RNG streams) of the resumed run "
                      "differ from an uninterrupted one", stacklevel=2)
    if not (ckpt / STATE_DIR).is_dir():
        raise InputError(f"{ckpt}: no {STATE_DIR}/: not a resumable checkpoint")
    load_state_safe(accelerator, ckpt / STATE_DIR, saved_world)  # every file checked before it is unpickled
    if progress.step != meta["step"]:
        raise InputError(f"{ckpt}: {STATE_DIR}/ is at step {progress.step} but {MARKER} says {meta['step']}")
    return meta
