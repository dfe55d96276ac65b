"""The training loop of `lvm train`: packed rows of visual sequences, next-token loss, accelerate.

    summary = train(load_config(TrainConfig, "configs/train/tiny.yaml"), resume=True)

One optimizer step = `accum` micro-batches of `micro_batch` packed rows on every rank (accum from
`tokens_per_step`); the loss is the mean next-token cross-entropy over all real targets of the step
(every rank, every micro-batch), so the gradient does not depend on how the step is split.

Run directory (`out_dir`):
    config.yaml                      resolved config (device and precision as `auto` resolved them)
    metrics.jsonl                    one line per step (loss, lr, tokens/s, MFU) and per evaluation
    tb/                              TensorBoard events
    checkpoints/step-00000100/       HF directory (config.json, model.safetensors) + trainer_state.pt
                                     (optimizer, scheduler, RNG) + trainer_state.json (step, data position)
Checkpoints appear atomically (written under a temporary name, then renamed); the last `keep_last` stay.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from data_builders.token_stream import TokenStream
from lvm.checkpoints import load_causal_lm
from tokenizer.common.config import save_config
from lvm.train.flops import measure_matmul_peak, train_flops
from lvm.model import model_config_from_hf, quiet_hf_progress
from lvm.train.packing import IGNORE, Packer, collate_rows, model_inputs, register_packed_attention
from lvm.train.config import TrainConfig
from tokenizer.common.hardware import make_accelerator, resolve
from tokenizer.common.errors import InputError
from tokenizer.common.files import atomic_dir, atomic_write_text
from tokenizer.common.rng import rng_state, set_rng_state


class TrainingDiverged(InputError):
    """The loss became NaN/inf; the run stops, keeping its last good checkpoint."""


# ---- data ----

class PackRows:
    """TokenStream pipeline: (key, codes, meta) items -> packed row dicts (runs inside DataLoader workers)."""

    def __init__(self, seq_len: int, layout, open_rows: int = 8):
        self.seq_len, self.layout, self.open_rows = seq_len, layout, open_rows

    def __call__(self, items):
        lay = self.layout
        p = Packer(self.seq_len, lay.pad_id, lay.tokens_per_image, self.open_rows)
        used = skipped = 0
        for key, codes, meta in items:
            if codes.ndim != 2 or codes.shape[1] != lay.tokens_per_image or codes.size == 0 \
                    or codes.min() < 0 or codes.max() >= lay.codebook_size:
                # Wrong tokenizer for this model (e.g. K mismatch): skip, never train on ids >= K.
                skipped += 1
                if skipped <= 10:
                    print(f"warning: skipping sequence {key}: codes {codes.shape} in "
                          f"[{codes.min()}, {codes.max()}], the model needs [0, {lay.codebook_size})")
                if used == 0 and skipped >= 100:
                    raise InputError(f"the first {skipped} sequences do not fit the model (codes outside "
                                     f"[0, {lay.codebook_size}) or not {lay.tokens_per_image} per image): "
                                     "were these shards made with another tokenizer?")
                continue
            used += 1
            yield from p.add(codes)
        yield from p.flush()


def make_loader(cfg: TrainConfig, layout, seq_len: int, rank: int, world: int, eval: bool = False):
    sources = cfg.data.source_list(eval)
    ds = TokenStream(sources, None if eval else cfg.data.weights, seed=cfg.seed, shuffle=not eval,
                     shuffle_buffer=cfg.data.shuffle_buffer, loop=not eval, rank=rank, world_size=world,
                     pipeline=PackRows(seq_len, layout, cfg.open_rows))
    loader = torch.utils.data.DataLoader(ds, batch_size=cfg.micro_batch, collate_fn=collate_rows,
                                         num_workers=0 if eval else cfg.data.num_workers)
    return ds, loader


def seq_lens(batch: dict, pad_id: int) -> list[int]:
    """Lengths of the real sequences in a packed batch (for FLOP counting)."""
    ids, seg = batch["input_ids"].numpy(), batch["segment_ids"].numpy()
    out = []
    for r in range(ids.shape[0]):
        real = seg[r][ids[r] != pad_id]
        out += [int(c) for c in np.bincount(real) if c]
    return out


# ---- model ----

def param_groups(model, weight_decay: float):
    """Weight decay on matrices (linear weights, embeddings), none on norms/biases."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    other = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0}]


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to `lr`, then cosine decay to `min_lr` at `max_steps` (step counts from 0)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    t = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * t))


# ---- checkpoints ----

def list_checkpoints(out_dir) -> list[Path]:
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step-*") if p.is_dir() and (p / "trainer_state.json").is_file())


def save_checkpoint(accelerator, model, optimizer, scheduler, out_dir, state: dict, keep_last: int) -> Path:
    root = Path(out_dir) / "checkpoints"
    final = root / f"step-{state['step']:08d}"
    full_state = accelerator.get_state_dict(model)  # collective under FSDP: every rank calls it
    if accelerator.is_main_process:
        with atomic_dir(final) as tmp, quiet_hf_progress():  # HF's one-shard bar would litter every save
            accelerator.unwrap_model(model).save_pretrained(tmp, state_dict=full_state, safe_serialization=True)
            # Optimizer/scheduler/RNG: tensors and numbers only, loaded back with weights_only=True.
            torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "rng": rng_state()}, tmp / "trainer_state.pt")
            (tmp / "trainer_state.json").write_text(json.dumps(state, indent=1))
        for old in list_checkpoints(out_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


# ---- the loop ----

def token_nll(model, batch, vocab: int, mode: str):
    """Per-token NLL (flat, 0 where the target is IGNORE) of a packed batch; logits in fp32 for the loss."""
    logits = model(**model_inputs(batch, mode)).logits
    return F.cross_entropy(logits.float().reshape(-1, vocab), batch["targets"].reshape(-1),
                           ignore_index=IGNORE, reduction="none")


def _mode(cfg) -> str:
    return "varlen" if cfg.attention == "varlen" else "mask"


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
            nll = token_nll(model, batch, layout.vocab_size, _mode(cfg)).double()
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


def train(cfg: TrainConfig, resume: bool = False, init_from: str | None = None, progress: bool = True,
          stop_at_step: int | None = None) -> dict:
    """Run (or continue) a training run. Returns {"step", "losses": {step: loss}, "eval": {...}, "out_dir"}.

    `stop_at_step` ends the process-level loop early without a final checkpoint, as a kill would
    (used by the resume test).
    """
    from accelerate.utils import set_seed
    from tqdm import tqdm

    plan = resolve(cfg.device, cfg.precision, "training")  # first: a missing GPU is the first thing to say
    out = Path(cfg.out_dir)
    ckpts = list_checkpoints(out) if resume else []
    if not resume and list_checkpoints(out):
        raise InputError(f"{out}: already holds checkpoints; use --resume to continue or another out_dir")
    if not cfg.data.source_list():
        raise InputError("data.shards is empty: give token shards, e.g. data.shards=data/demo/tokens")

    accelerator, amp = make_accelerator(plan)
    set_seed(cfg.seed)
    if cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)

    # Model: a resumed checkpoint, an HF directory to fine-tune, or a fresh init.
    start_dir = ckpts[-1] if ckpts else (Path(init_from) if init_from else None)
    if start_dir is not None:
        model = load_causal_lm(start_dir, "cpu", "fp32")[0].train()  # accelerate places it
        # grid_heads only shapes a fresh init: a resumed run keeps the value it was started with.
        grid_heads = cfg.model.grid_heads if ckpts else 0
        cfg.model = model_config_from_hf(model.config)
        cfg.model.grid_heads = grid_heads
    else:
        model = cfg.model.build()
    model.set_attn_implementation(register_packed_attention() if cfg.attention == "varlen" else cfg.attention)
    layout = cfg.model.layout
    seq_len = cfg.seq_len or cfg.model.max_position_embeddings
    if seq_len % layout.tokens_per_image or seq_len > cfg.model.max_position_embeddings:
        raise InputError(f"seq_len {seq_len} must be a multiple of {layout.tokens_per_image} "
                         f"and <= the model's context {cfg.model.max_position_embeddings}")
    if cfg.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    # The saved config records what auto resolved to (device of rank 0 in a multi-process run).
    cfg.device, cfg.precision = str(accelerator.device), plan.precision
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out)

    world = accelerator.num_processes
    accum = max(1, math.ceil(cfg.tokens_per_step / (cfg.micro_batch * seq_len * world)))
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_at(s, cfg) / cfg.lr)
    if cfg.compile:
        model = torch.compile(model)
    model, optimizer = accelerator.prepare(model, optimizer)

    step, consumed, tokens_seen = 0, 0, 0
    if ckpts:
        st = torch.load(ckpts[-1] / "trainer_state.pt", weights_only=True)
        optimizer.load_state_dict(st["optimizer"])
        scheduler.load_state_dict(st["scheduler"])
        set_rng_state(st["rng"])
        meta = json.loads((ckpts[-1] / "trainer_state.json").read_text())
        step, consumed, tokens_seen = meta["step"], meta["consumed_batches"], meta["tokens_seen"]
        accelerator.print(f"resuming from {ckpts[-1]} (step {step})")

    ds, loader = make_loader(cfg, layout, seq_len, accelerator.process_index, world)
    ds.set_position(consumed, cfg.micro_batch)
    batches = iter(loader)

    dev = accelerator.device
    # MFU against the peak of the dtype the matmuls actually run in, on this device.
    peak = cfg.peak_tflops * 1e12 if cfg.peak_tflops else measure_matmul_peak(plan.dtype, str(dev), seconds=0.5)
    hf_cfg = accelerator.unwrap_model(model).config
    writer = None
    if accelerator.is_main_process:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tb"))
    metrics_path = out / "metrics.jsonl"

    def log(rec: dict):
        if accelerator.is_main_process:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
            for k, v in rec.items():
                if k != "step" and isinstance(v, (int, float)):
                    writer.add_scalar(k, v, rec["step"])

    def state():
        return {"step": step, "consumed_batches": consumed, "tokens_seen": tokens_seen,
                "accum": accum, "micro_batch": cfg.micro_batch, "seq_len": seq_len}

    losses, last_eval = {}, {}
    bar = tqdm(total=cfg.max_steps, initial=step, disable=not (progress and accelerator.is_main_process),
               desc="train", dynamic_ncols=True)
    model.train()
    t_last, tok_window, flops_window = time.perf_counter(), 0, 0.0
    while step < cfg.max_steps:
        if stop_at_step is not None and step >= stop_at_step:
            break
        micro = [next(batches) for _ in range(accum)]
        consumed += accum
        micro = [{k: v.to(dev) for k, v in b.items()} for b in micro]
        n_tgt = torch.tensor(float(sum(int((b["targets"] != IGNORE).sum()) for b in micro)), device=dev)
        n_tgt = accelerator.reduce(n_tgt, reduction="sum")
        loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
        for i, b in enumerate(micro):
            sync = accelerator.no_sync(model) if (i < accum - 1 and world > 1) else nullcontext()
            with sync:
                with amp:
                    nll = token_nll(model, b, layout.vocab_size, _mode(cfg)).sum()
                # DDP averages gradients over ranks; scale so the result is the mean over all targets.
                accelerator.backward(nll * world / n_tgt.clamp(min=1))
            loss_sum += nll.detach().double()
        loss = float(accelerator.reduce(loss_sum, reduction="sum") / n_tgt.clamp(min=1))
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        finite_grads = bool(torch.isfinite(torch.as_tensor(grad_norm)).all())
        # Under fp16 the grad scaler skips a step with inf/NaN gradients and lowers its scale: not divergence.
        if not math.isfinite(loss) or (not finite_grads and accelerator.scaler is None):
            good = list_checkpoints(out)
            bar.close()
            raise TrainingDiverged(
                f"loss became {loss} (grad norm {float(grad_norm)}) at step {step + 1}; stopped without "
                f"updating. Last good checkpoint: {good[-1] if good else 'none'}. Lower lr or check the data, "
                f"then --resume.")
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        real = sum(int((b["input_ids"] != layout.pad_id).sum()) for b in micro)
        tokens_seen += real * world
        tok_window += real * world
        flops_window += sum(train_flops(hf_cfg, seq_lens({k: v.cpu() for k, v in b.items()}, layout.pad_id))
                            for b in micro) * world
        losses[step] = loss
        padded = 1 - real / (len(micro) * cfg.micro_batch * seq_len)
        bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.max_steps or step == 1:
            dt = time.perf_counter() - t_last
            tps, mfu = tok_window / dt, flops_window / dt / (peak * world)
            bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{tps:.0f}", mfu=f"{100 * mfu:.1f}%")
            log({"step": step, "loss": loss, "lr": lr, "grad_norm": float(grad_norm), "tokens_per_s": tps,
                 "mfu": mfu, "padded_fraction": padded, "tokens_seen": tokens_seen})
            t_last, tok_window, flops_window = time.perf_counter(), 0, 0.0
        else:
            log({"step": step, "loss": loss, "lr": lr})
        if cfg.data.eval_shards and (step % cfg.eval_every == 0 or step == cfg.max_steps):
            last_eval = evaluate(model, cfg, layout, seq_len, accelerator, amp)
            if last_eval:
                log({"step": step, **last_eval})
                bar.write(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in last_eval.items()))
        if step % cfg.save_every == 0 or step == cfg.max_steps:
            save_checkpoint(accelerator, model, optimizer, scheduler, out, state(), cfg.keep_last)
    bar.close()
    if writer is not None:
        writer.close()
    if accelerator.is_main_process and step == cfg.max_steps:
        atomic_write_text(out / "final.json", json.dumps({**state(), "checkpoint": str(list_checkpoints(out)[-1]),
                                                          **last_eval}, indent=1))
    return {"step": step, "losses": losses, "eval": last_eval, "out_dir": str(out),
            "bad_shards": ds.bad_shards}
