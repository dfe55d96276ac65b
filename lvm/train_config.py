"""Configuration of `lvm train` (the transformer's training run)."""

from __future__ import annotations

from dataclasses import dataclass, field

from lvm.model import ModelConfig


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    out_dir: str = "runs/lvm"
