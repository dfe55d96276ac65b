"""Configuration of `lvm train` (the transformer's training run); see configs/train/*.yaml."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from data_builders.token_stream import TokenStreamConfig
from lvm.model import ModelConfig
from lvm_base.errors import InputError
from lvm_base.validate import NON_NEGATIVE, POSITIVE, SEED, above, at_least, between, checks, each, optional


# Ranges of the values (lvm_base.validate): each one a value outside it crashes, hangs or silently
# misbehaves with (seq_len -256 packs forever; save_every 0 divides by zero; lr 0 divides min_lr by it).
@dataclass
@checks(seed=SEED, seq_len=optional(POSITIVE), micro_batch=POSITIVE, tokens_per_step=NON_NEGATIVE,
        max_steps=POSITIVE, max_minutes=optional(above(0)), open_rows=POSITIVE, lr=above(0), min_lr=at_least(0.0),
        warmup_steps=NON_NEGATIVE, weight_decay=at_least(0.0), betas=each(between(0.0, 1.0, open_hi=True)),
        grad_clip=above(0), threads=NON_NEGATIVE, peak_tflops=optional(above(0)),
        log_every=POSITIVE, eval_every=POSITIVE, eval_batches=POSITIVE, save_every=POSITIVE, keep_last=POSITIVE,
        # the data section's counts are used by this run only (TokenStreamConfig declares no table)
        **{"data.shuffle_buffer": NON_NEGATIVE, "data.num_workers": NON_NEGATIVE,
           "data.weights": optional(each(at_least(0.0)))})
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

    # where and in what precision (lvm_base.hardware.resolve; the saved config.yaml records what auto chose)
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
    threads: int = 0  # torch threads on CPU (0 = torch's default); 1 helps on oversubscribed machines
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

    def __post_init__(self):
        # packed rows hold whole images and fit the model's positions (lvm.train.loop checks it again)
        tpi, ctx = self.model.layout.tokens_per_image, self.model.max_position_embeddings
        if self.seq_len is not None and (self.seq_len % tpi or self.seq_len > ctx):
            raise InputError(f"seq_len {self.seq_len} must be a multiple of {tpi} and at most "
                             f"model.max_position_embeddings ({ctx})")
