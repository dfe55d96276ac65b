"""Checkpoints of the tokenizer trainer (the layout is in tokenizer/train.py's docstring): saving through
accelerate's state machinery into a directory that appears whole, the export of the newest weights, and
resuming from the newest complete checkpoint.

`TrainerCheckpoints` is a mixin of `tokenizer.train.Trainer`: it reads and writes the trainer's state
(`self.acc`, models, optimizers, schedules, data position), and nothing else uses it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from lvm_base.checkpointing import STATE_DIR, list_step_dirs, load_state_safe, prune_step_dirs, save_state_atomic
from lvm_base.errors import InputError
from lvm_base.files import atomic_write_text

MARKER = "state.json"  # written last inside a checkpoint directory: it is complete when this is there


class TrainerCheckpoints:
    def _ckpt_root(self):
        return self.out / "ckpt"

    def _save_weights_hook(self, models, weights, output_dir):
        """accelerate's save_state: no copy of the weights (with DDP's `module.` names) in state/; they are
        saved once, as the tokenizer export and disc.safetensors (`_write_extra`)."""
        weights.clear()

    def _load_weights_hook(self, models, input_dir):
        """accelerate's load_state: the weights are read from our files by `_load_weights`."""
        models.clear()

    def _load_weights(self, d: Path):
        from safetensors.torch import load_file

        model = self.acc.unwrap_model(self.model)
        model.load_checked(load_file(str(d / "model.safetensors")), d)
        model.train()
        self.acc.unwrap_model(self.disc).load_state_dict(load_file(str(d / "disc.safetensors")))

    def _quantizer_state(self) -> dict:
        q = self.acc.unwrap_model(self.model).quantize
        return {"idle_steps": q.idle_steps.cpu(), "initialized": q.initialized} if hasattr(q, "idle_steps") else {}

    def _set_quantizer_state(self, st: dict) -> None:
        if st:
            q = self.acc.unwrap_model(self.model).quantize
            q.idle_steps.copy_(st["idle_steps"])
            q.initialized = bool(st["initialized"])

    def _write_extra(self, tmp: Path) -> None:
        """What accelerate's state/ lacks (every rank): each rank's progress, then from the main process the
        weights and, last, the marker."""
        from safetensors.torch import save_file

        torch.save({"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "skipped": self.skipped,
                    "qgen": self.qgen.get_state(), "quantizer": self._quantizer_state()},
                   tmp / STATE_DIR / f"progress_{self.acc.process_index}.pt")
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            cfg = self.cfg
            self.acc.unwrap_model(self.model).save_pretrained(tmp)
            disc = self.acc.unwrap_model(self.disc)
            save_file({k: v.detach().cpu().contiguous() for k, v in disc.state_dict().items()},
                      str(tmp / "disc.safetensors"))
            meta = {"step": self.step, "images_seen": self.images_seen, "world_size": self.acc.num_processes,
                    "batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum}
            (tmp / MARKER).write_text(json.dumps(meta, indent=1) + "\n")

    def save(self):
        if self._saved_step == self.step:
            return  # this state is saved already (a final save right after a periodic one, or on resume)
        root, name = self._ckpt_root(), f"step-{self.step:07d}"
        save_state_atomic(self.acc, root / name, self._write_extra)
        if self.acc.is_main_process:
            atomic_write_text(root / "latest", name + "\n")
            # export the newest weights at the top of out_dir (each file atomic)
            export_weights(self.acc.unwrap_model(self.model), self.out, self.cfg.export_dtype)
            prune_step_dirs(root, MARKER, [name])
            for stale in root.glob(".step-*.tmp"):  # left by a run killed while saving
                shutil.rmtree(stale, ignore_errors=True)
        self._saved_step = self.step
        self.acc.wait_for_everyone()

    def _load_latest(self):
        root = self._ckpt_root()
        latest = root / "latest"
        if not latest.is_file():
            self.log(f"--resume: no checkpoint in {root}, starting from scratch")
            return
        d = root / latest.read_text().strip()
        if not (d / MARKER).is_file():
            # a kill between replacing a same-named step directory and `latest`: the newest complete one
            done = list_step_dirs(root, MARKER)
            if not done:
                self.log(f"--resume: {d} is incomplete and no other checkpoint is there, starting from scratch")
                return
            d = max(done, key=lambda p: p.name)
        saved = json.loads((d / "config.json").read_text())
        saved.pop("format", None)
        now = self.cfg.model.to_dict()
        saved["precision"] = now["precision"]  # inference precision: not part of what was trained
        if saved != now:
            diff = sorted(k for k in saved if saved.get(k) != now.get(k))
            raise InputError(f"{d}: checkpoint model config differs from this config in: {', '.join(diff)}")
        self._load_state(d)
        self.resumed_from, self._saved_step = d, self.step
        self.acc.step = self.step * self.cfg.grad_accum  # accelerate's micro-step count (gradient accumulation)
        self.log(f"resumed from {d} at step {self.step}")

    def _load_state(self, d: Path):
        cfg = self.cfg
        meta = json.loads((d / MARKER).read_text())
        self._load_weights(d)
        load_state_safe(self.acc, d / STATE_DIR)  # optimizers, schedules, scaler, this rank's RNGs
        w, r = meta["world_size"], self.acc.process_index
        st = torch.load(d / STATE_DIR / f"progress_{min(r, w - 1)}.pt", map_location="cpu", weights_only=True)
        self.step, self.images_seen = meta["step"], meta["images_seen"]
        self.epoch, self.batch_in_epoch, self.skipped = st["epoch"], st["batch_in_epoch"], st["skipped"]
        self.qgen.set_state(st["qgen"])
        self._set_quantizer_state(st["quantizer"])
        if (w, meta["batch_size"]) != (self.acc.num_processes, cfg.batch_size):
            # the same place in the epoch, counted in images; batches, flips and crops differ from the
            # uninterrupted run's
            self.batch_in_epoch = (self.batch_in_epoch * meta["batch_size"] * w
                                   // (cfg.batch_size * self.acc.num_processes))
            self.log(f"note: {d} was saved by {w} processes with batch_size={meta['batch_size']}; continuing with "
                     f"{self.acc.num_processes} x {cfg.batch_size}, so the data order and random streams differ "
                     f"from an uninterrupted run")


def export_weights(model, out: Path, dtype: str = "fp32") -> None:
    """The tokenizer checkpoint in `out` with its floating-point weights stored as `dtype` (fp32 | fp16 |
    bf16)."""
    model.write_checkpoint(out, {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype])
