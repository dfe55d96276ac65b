"""The learning-rate schedule of both trainers (lvm/train/loop.py, tokenizer/train.py): linear warmup,
then cosine decay to a floor.

transformers' `get_cosine_with_min_lr_schedule_with_warmup` is not used: its warmup starts at lr 0
(step / warmup, so a one-step fine-tune would not move the weights) and its cosine rises again past
`num_training_steps`, where this one stays at the floor.
"""

from __future__ import annotations

import math


def warmup_cosine_factor(step: int, warmup_steps: int, max_steps: int, floor: float) -> float:
    """Multiplier of the base lr at optimizer step `step` (counted from 0): (step + 1) / warmup during the
    warmup, then cosine from 1 down to `floor` (min_lr / lr) at `max_steps`, and `floor` after it."""
    if step < warmup_steps:
        return (step + 1) / max(1, warmup_steps)
    t = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))


def warmup_cosine(optimizer, warmup_steps: int, max_steps, lr: float, min_lr: float):
    """A LambdaLR of `warmup_cosine_factor` decaying every param group to min_lr / lr of its base lr.
    `max_steps` is an int or a function returning the current horizon (a run that fits its steps to a
    time budget moves it while training)."""
    import torch

    floor = min_lr / lr
    horizon = max_steps if callable(max_steps) else (lambda: max_steps)

    def factor(step):  # a plain function: LambdaLR then keeps no state of it in its state_dict
        return warmup_cosine_factor(step, warmup_steps, horizon(), floor)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
