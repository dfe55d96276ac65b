"""Timing probes: seconds of a unit of the demo's work measured on this machine now, on the demo's device and
in its precision. The tokenizer stage sizes its steps by them and the estimates printed before each stage
scale with them (lvm/demo/stages.py); the transformer stage fits its steps by its own pace instead
(TrainConfig.max_minutes)."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from lvm.checkpoints import load_pair


def seconds_per_call(fn, reps: int = 1, warmup: int = 1) -> float:
    """Median seconds of `reps` calls after `warmup` untimed ones (allocations, kernels, lazy init)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def probe_tokenizer(tc) -> float:
    """Seconds of one tokenizer training step (forward + L1 + backward on a random batch) on this machine,
    on the device and in the precision its training run resolves to."""
    import torch

    from lvm_base.hardware import synchronize
    from tokenizer.train import training_model, training_plan

    plan = training_plan(tc)
    torch.manual_seed(0)
    model = training_model(tc, plan).to(plan.device)  # the trainer's own layout for this precision
    r = tc.data.crop or tc.model.resolution
    x = (torch.rand(tc.batch_size * tc.grad_accum, 3, r, r) * 2 - 1).to(plan.device)

    def step():
        with plan.autocast():
            xrec, q, _ = model(x)
        ((x - xrec.float()).abs().mean() + q).backward()
        synchronize(plan.device)

    # oneDNN builds its backward primitives over the first calls: with a single warm-up step the timing
    # still includes that work, reads slower than the steps that follow, and the stage plans fewer steps
    # than fit.
    return seconds_per_call(step, reps=3, warmup=2)


def probe_encode(tok_dir: Path, cfg, n: int = 16) -> float:
    """Seconds per image of `tokenize`'s encoding (random images of the demo's size, its device/precision)."""
    import numpy as np
    from PIL import Image

    from tokenizer import load_tokenizer
    from lvm_base.hardware import synchronize

    tok = load_tokenizer(tok_dir, device=cfg.device, precision=cfg.precision)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (cfg.image_size, cfg.image_size, 3), dtype=np.uint8))
              for _ in range(n)]

    def encode():
        tok.encode_images(images, batch_size=n)
        synchronize(cfg.device)

    return seconds_per_call(encode) / n


def probe_eval_episode(model_dir: Path, tok_dir: Path, suite) -> float:
    """Seconds of one episode of the task suite (a mean-decoded task: most of the six are), run for real."""
    import dataclasses

    from lvm.eval import tasks as te

    one = dataclasses.replace(suite, tasks=["colorization"], episodes=1, grid_rows=0)
    model, tok, _ = load_pair(model_dir, tok_dir, suite.device, suite.precision)
    episodes = te.make_episodes(one, tok.resolution)
    t0 = time.perf_counter()
    te.evaluate_model(model, tok, episodes, one, progress=False, log=lambda *a: None)
    return time.perf_counter() - t0
