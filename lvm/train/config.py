"""Configuration of `lvm train` (the transformer's training run); see configs/train/*.yaml."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from data_builders.token_stream import TokenStreamConfig
from lvm.model import ModelConfig


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: TokenStreamConfig = field(default_factory=TokenStreamConfig)
    out_dir: str = "runs/lvm"
    seed: int = 0

    # rows and steps
    seq_len: int | None = None  # tokens per packed row; default: model.max_position_embeddings
    micro_batch: int = 1  # rows per forward/backward
    tokens_per_step: int = 0  # target tokens per optimizer step (grad accumulation); 0 = one micro-batch
    max_steps: int = 1000
    # A wall-clock budget for this process's steps: the run measures its pace and fits the lr schedule's
    # horizon (max_steps, which then is only a ceiling) to the minutes left, first after a few warmup
    # steps (warmup does not depend on the horizon), then every 100 steps; it stops when they are used up.
    max_minutes: float | None = None
    open_rows: int = 8  # packer's open rows (more = less padding)

    # optimizer (the LVM recipe: AdamW (0.9, 0.95), wd 0.1, clip 1.0, warmup then cosine 1.5e-4 -> 3e-5)
    lr: float = 1.5e-4
    min_lr: float = 3e-5
    warmup_steps: int = 100
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0

    # where and in what precision (tokenizer.common.hardware.resolve; the saved config.yaml records what auto chose)
    device: str = "auto"  # auto (this rank's GPU, else MPS, else CPU), cpu, cuda, cuda:N, mps
    # auto: bf16 where the hardware computes it natively, fp16 on pre-Ampere GPUs (grad scaler), else fp32.
    # bf16/fp16 are autocast mixed precision with fp32 master weights.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"

    # speed
    # varlen: causal SDPA per packed sequence (lvm.train.packing.packed_attention); sdpa/eager: 4-D block mask
    attention: Literal["varlen", "sdpa", "eager"] = "varlen"
    activation_checkpointing: bool = False
    compile: bool = False
    deterministic: bool = False  # torch deterministic algorithms (for exact-resume checks)
    cpu_threads: int | None = None  # torch threads on CPU (None = torch default); 1 helps on oversubscribed machines
    peak_tflops: float | None = None  # for MFU; None = measure this device's matmul peak in the dtype used

    # logging, evaluation, checkpoints
    # accelerate trackers, a comma list (tensorboard, wandb, mlflow, ...; none = metrics.jsonl only);
    # TensorBoard writes to out_dir/tb
    trackers: str = "tensorboard"
    log_every: int = 10
    eval_every: int = 200
    eval_batches: int = 16
    save_every: int = 200
    keep_last: int = 3
