"""Config of `lvm tokenizer train` (and of configs/tokenizer/*.yaml): model + data + loss + schedule.

The `model:` section is a `VQGANConfig`; tools that only need the architecture (the benchmark, tests)
read that section. Loaded by the CLI with `lvm_base.config.load_config(TokenizerTrainConfig, path, overrides)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .model import VQGANConfig


@dataclass
class TokenizerDataConfig:
    # A folder of images (recursive), a text file listing image paths (one per line, relative to the
    # file), or webdataset image shards ("shards/*.tar", "shards/train-{000..009}.tar").
    path: str | None = None
    # Held-out images for periodic evaluation (same kinds as `path`); none = no periodic evaluation.
    eval_path: str | None = None
    eval_images: int = 256         # evaluate on at most this many held-out images
    random_flip: bool = True
    # Train on random square crops of this many pixels (a multiple of the model's downsampling factor) cut
    # from the full-resolution images. The network is convolutional, so the trained model still encodes
    # full images; a 64 px crop makes a step ~4x cheaper than 128 px. None = whole images.
    crop: int | None = None
    num_workers: int = 0


@dataclass
class TokenizerLossConfig:
    recon: Literal["l1", "l2"] = "l1"
    recon_weight: float = 1.0
    codebook_weight: float = 1.0
    # LPIPS needs VGG16 ImageNet weights (torchvision state dict) + LPIPS linear-layer weights, both from
    # local files. Without them training runs without the perceptual term (logged once, recorded below).
    perceptual_weight: float = 1.0
    lpips_vgg: str | None = None   # as `--lpips-vgg` of `lvm tokenizer eval` and `lvm eval tasks`
    lpips_lin: str | None = None
    perceptual_used: bool | None = None   # written by the trainer into the saved config
    # PatchGAN discriminator, hinge loss, adaptive weight (taming's recipe).
    disc_weight: float = 0.8
    disc_start: int = 10000
    disc_layers: int = 3
    disc_channels: int = 64
    disc_lr_mult: float = 1.0


@dataclass
class TokenizerTrainConfig:
    model: VQGANConfig = field(default_factory=VQGANConfig)
    data: TokenizerDataConfig = field(default_factory=TokenizerDataConfig)
    loss: TokenizerLossConfig = field(default_factory=TokenizerLossConfig)
    out_dir: str = "runs/tokenizer"
    seed: int = 0
    batch_size: int = 8              # per device, per micro-step
    grad_accum: int = 1
    max_steps: int = 10000           # optimizer steps
    max_minutes: float | None = None # stop (after saving) when this wall time is used up
    stop_at_step: int | None = None  # stop (after saving) at this step; unlike max_steps the schedule is unchanged
    lr: float = 1e-4
    min_lr: float = 1e-5
    warmup_steps: int = 200
    betas: tuple[float, float] = (0.5, 0.9)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    # Where and in what precision to train; "auto" = lvm_base.hardware.resolve(purpose="training"): bf16
    # where the CPU/GPU computes it natively, fp16 (with a grad scaler) on pre-Ampere GPUs, else fp32.
    # The saved config.yaml records what auto resolved to.
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # dtype of the exported out_dir/model.safetensors (the resumable checkpoints in ckpt/ stay fp32):
    # fp16 halves a checkpoint that ships inside a repository at no measurable cost in reconstruction
    export_dtype: Literal["fp32", "fp16", "bf16"] = "fp32"
    dead_code_max_idle: int = 100    # "normed" quantizer: restart codes unused for this many steps (0 = off)
    # accelerate trackers, a comma list (tensorboard, wandb, mlflow, ...; none = the JSONL logs only);
    # TensorBoard writes to out_dir/tb
    trackers: str = "tensorboard"
    log_every: int = 10
    eval_every: int = 500
    save_every: int = 200
