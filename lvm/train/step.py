"""One optimizer step of `lvm train` and the held-out evaluation: loss, gradients, update.

The loss of a step is the mean next-token cross-entropy over all real targets of the step (every rank,
every micro-batch), so the gradient does not depend on how the step is split.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lvm.train.data import make_loader
from lvm.train.packing import IGNORE, model_inputs
from lvm_base.errors import InputError


class TrainingDiverged(InputError):
    """The loss became NaN/inf; the run stops, keeping its last good checkpoint."""


def param_groups(model, weight_decay: float):
    """Weight decay on matrices (linear weights, embeddings), none on norms/biases."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    other = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0}]


def token_nll(model, batch, vocab: int, mode: str):
    """Per-token NLL (flat, 0 where the target is IGNORE) of a packed batch; logits in fp32 for the loss."""
    logits = model(**model_inputs(batch, mode)).logits
    return F.cross_entropy(logits.float().reshape(-1, vocab), batch["targets"].reshape(-1),
                           ignore_index=IGNORE, reduction="none")


def attention_mode(cfg) -> str:
    """model_inputs' mode for cfg.attention: varlen rows, or a 4-D block mask for sdpa/eager."""
    return "varlen" if cfg.attention == "varlen" else "mask"


@dataclass
class StepResult:
    loss: float
    grad_norm: float
    lr: float  # the lr this step's update used
    micro: list  # the step's micro-batches (on the device)


def train_step(accelerator, model, optimizer, scheduler, micro: list, cfg, vocab: int, amp) -> StepResult:
    """Forward/backward over the micro-batches `micro`, clip, then one optimizer + scheduler step.

    Raises TrainingDiverged, without updating, when the loss or (without a grad scaler) the gradients
    are not finite.
    """
    dev, world, accum = accelerator.device, accelerator.num_processes, len(micro)
    n_tgt = torch.tensor(float(sum(int((b["targets"] != IGNORE).sum()) for b in micro)), device=dev)
    n_tgt = accelerator.reduce(n_tgt, reduction="sum")
    loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
    for i, b in enumerate(micro):
        sync = accelerator.no_sync(model) if (i < accum - 1 and world > 1) else nullcontext()
        with sync:
            with amp:
                nll = token_nll(model, b, vocab, attention_mode(cfg)).sum()
            # DDP averages gradients over ranks; scale so the result is the mean over all targets.
            accelerator.backward(nll * world / n_tgt.clamp(min=1))
        loss_sum += nll.detach().double()
    loss = float(accelerator.reduce(loss_sum, reduction="sum") / n_tgt.clamp(min=1))
    grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    finite_grads = bool(torch.isfinite(torch.as_tensor(grad_norm)).all())
    # Under fp16 the grad scaler skips a step with inf/NaN gradients and lowers its scale: not divergence.
    if not math.isfinite(loss) or (not finite_grads and accelerator.scaler is None):
        raise TrainingDiverged(f"loss became {loss} (grad norm {float(grad_norm)})")
    lr = scheduler.get_last_lr()[0]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(loss, float(grad_norm), lr, micro)


@torch.no_grad()
def evaluate(model, cfg, layout, seq_len, accelerator, amp=None) -> dict:
    """Held-out loss (all targets) and next-image perplexity (targets of each sequence's last image)."""
    _, loader = make_loader(cfg, layout, seq_len, accelerator.process_index, accelerator.num_processes, eval=True)
    amp = amp or nullcontext()
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=accelerator.device)
    for i, batch in enumerate(loader):
        if i >= cfg.eval_batches:
            break
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        with amp:
            nll = token_nll(model, batch, layout.vocab_size, attention_mode(cfg)).double()
        valid = batch["targets"].reshape(-1) != IGNORE
        last = batch["last_image"].reshape(-1) & valid
        sums += torch.stack([nll[valid].sum(), valid.sum(), nll[last].sum(), last.sum()]).double()
    model.train()
    sums = accelerator.reduce(sums, reduction="sum")
    if sums[1] == 0:
        return {}
    out = {"eval/loss": float(sums[0] / sums[1])}
    if sums[3] > 0:
        out["eval/next_image_ppl"] = float(torch.exp(sums[2] / sums[3]))
    return out
