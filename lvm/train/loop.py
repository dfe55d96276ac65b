"""The training loop of `lvm train`: packed rows of visual sequences, next-token loss, accelerate.

    summary = train(load_config(TrainConfig, "configs/train/tiny.yaml"), resume=True)

One optimizer step = `accum` micro-batches of `micro_batch` packed rows on every rank (accum from
`tokens_per_step`); the step itself is lvm/train/step.py.

Run directory (`out_dir`):
    config.yaml                      resolved config (device and precision as `auto` resolved them)
    metrics.jsonl                    one line per step (loss, lr, tokens/s, MFU) and per evaluation
    tb/                              TensorBoard events (plus any other tracker in `trackers`)
    checkpoints/step-00000100/       HF directory (config.json, model.safetensors) + state/ (accelerate's
                                     save_state: optimizer, scheduler, every rank's RNG, the run's progress;
                                     FSDP: every rank's model/optimizer shards) + trainer_state.json (step,
                                     data position), written last (layout: lvm/train/resume.py)
Checkpoints appear atomically (every rank writes into one temporary directory, which is then renamed);
the last `keep_last` stay. Several processes (DDP, FSDP) resume exactly: same losses, same weights.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from lvm.checkpoints import load_causal_lm
from lvm.model import model_config_from_hf
from lvm.train.resume import attach, list_checkpoints, load_checkpoint, save_checkpoint
from lvm.train.config import TrainConfig
from lvm.train.data import make_loader, seq_lens
from lvm.train.flops import linear_shapes, measure_matmul_peak, train_flops
from lvm.train.packing import register_packed_attention
from lvm.train.step import TrainingDiverged, evaluate, param_groups, token_nll, train_step
from lvm_base.config import save_config
from lvm_base.errors import InputError
from lvm_base.files import atomic_write_text
from lvm_base.hardware import make_accelerator, resolve
from lvm_base.schedule import warmup_cosine
from lvm_base.tracking import RunLog, tracker_kwargs

__all__ = ["TrainingDiverged", "evaluate", "list_checkpoints", "param_groups", "token_nll", "train"]


@dataclass
class Run:
    """Everything one training run holds between steps."""

    cfg: TrainConfig
    out: Path
    accelerator: object
    amp: object
    model: object
    optimizer: object
    scheduler: object
    layout: object
    seq_len: int
    accum: int
    ckpt: Path | None = None  # the checkpoint resumed from
    ceiling: int = 0  # the configured max_steps: a timed run's horizon stays at or below it
    step: int = 0
    consumed: int = 0  # micro-batches drawn per rank (the data position)
    tokens_seen: int = 0

    def state(self) -> dict:
        """trainer_state.json of a checkpoint at this step."""
        return {"step": self.step, "consumed_batches": self.consumed, "tokens_seen": self.tokens_seen,
                "accum": self.accum, "micro_batch": self.cfg.micro_batch, "seq_len": self.seq_len,
                "max_steps": self.cfg.max_steps}

    # The run's progress as accelerate's register_for_checkpointing saves and restores it (plain ints:
    # the file loads with weights_only=True).
    def state_dict(self) -> dict:
        return {"step": self.step, "consumed_batches": self.consumed, "tokens_seen": self.tokens_seen,
                "horizon": self.cfg.max_steps}

    def load_state_dict(self, st: dict) -> None:
        self.step, self.consumed, self.tokens_seen = (int(st["step"]), int(st["consumed_batches"]),
                                                      int(st["tokens_seen"]))
        if self.cfg.max_minutes is not None and "horizon" in st:
            # a timed run resumes on the horizon it had fitted, so its lr schedule continues unchanged
            self.cfg.max_steps = min(int(st["horizon"]), self.cfg.max_steps)


def _start_model(cfg: TrainConfig, ckpts: list, init_from: str | None):
    """A resumed checkpoint, an HF directory to fine-tune, or a fresh init (cfg.model follows it)."""
    start_dir = ckpts[-1] if ckpts else (Path(init_from) if init_from else None)
    if start_dir is None:
        return cfg.model.build()
    model = load_causal_lm(start_dir, "cpu", "fp32")[0].train()  # accelerate places it
    # grid_heads only shapes a fresh init: a resumed run keeps the value it was started with.
    grid_heads = cfg.model.grid_heads if ckpts else 0
    cfg.model = model_config_from_hf(model.config)
    cfg.model.grid_heads = grid_heads
    return model


def setup(cfg: TrainConfig, resume: bool, init_from: str | None) -> tuple[Run, object]:
    """Check the inputs, build accelerator, model, optimizer and scheduler, restore a resumed run.

    Returns (run, plan). Every RNG draw happens in the order a resumed run replays.
    """
    from accelerate.utils import set_seed

    plan = resolve(cfg.device, cfg.precision, "training")  # first: a missing GPU is the first thing to say
    out = Path(cfg.out_dir)
    ckpts = list_checkpoints(out) if resume else []
    if not resume and list_checkpoints(out):
        raise InputError(f"{out}: already holds checkpoints; use --resume to continue or another out_dir")
    if not cfg.data.source_list():
        raise InputError("data.shards is empty: give token shards, e.g. data.shards=data/demo/tokens")

    # The lr schedule steps once per optimizer step whatever the number of processes (accelerate would
    # otherwise step a prepared scheduler num_processes times).
    accelerator, amp = make_accelerator(plan, step_scheduler_with_optimizer=False,
                                        **tracker_kwargs(out, cfg.trackers))
    set_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)

    model = _start_model(cfg, ckpts, init_from)
    model.set_attn_implementation(register_packed_attention() if cfg.attention == "varlen" else cfg.attention)
    layout = cfg.model.layout
    seq_len = cfg.seq_len or cfg.model.max_position_embeddings
    if seq_len % layout.tokens_per_image or seq_len > cfg.model.max_position_embeddings:
        raise InputError(f"seq_len {seq_len} must be a multiple of {layout.tokens_per_image} "
                         f"and <= the model's context {cfg.model.max_position_embeddings}")
    if cfg.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    _record_tokenizer(model.config, cfg, out)
    # The saved config records what auto resolved to (device of rank 0 in a multi-process run).
    cfg.device, cfg.precision = str(accelerator.device), plan.precision
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out)

    world = accelerator.num_processes
    accum = max(1, math.ceil(cfg.tokens_per_step / (cfg.micro_batch * seq_len * world)))
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas))
    # the horizon is read at every step: a timed run (max_minutes) moves it
    scheduler = warmup_cosine(optimizer, cfg.warmup_steps, lambda: cfg.max_steps, cfg.lr, cfg.min_lr)
    if cfg.compile:
        model = torch.compile(model)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    run = Run(cfg, out, accelerator, amp, model, optimizer, scheduler, layout, seq_len, accum,
              ceiling=cfg.max_steps)
    attach(accelerator, run)  # save_state/load_state carry the run's step and data position
    if ckpts:
        load_checkpoint(accelerator, ckpts[-1], run)
        run.ckpt = ckpts[-1]
        accelerator.print(f"resuming from {ckpts[-1]} (step {run.step})")
    return run, plan


def _record_tokenizer(hf_config, cfg: TrainConfig, out: Path) -> None:
    """Set the checkpoints' tokenizer record (lvm.checkpoints.TOKENIZER_KEY) from the tokens_info.json of
    the training shards (lvm data tokenize writes it), relative to out/checkpoints/step-N/."""
    from lvm.checkpoints import TOKENIZER_KEY, tokenizer_reference

    first = Path(str(cfg.data.source_list()[0]))
    info = next((d / "tokens_info.json" for d in (first, first.parent) if (d / "tokens_info.json").is_file()), None)
    try:
        tok = json.loads(info.read_text()).get("tokenizer") if info else None
    except (OSError, ValueError, AttributeError):
        tok = None
    if isinstance(tok, str) and tok:
        setattr(hf_config, TOKENIZER_KEY, tokenizer_reference(tok, out / "checkpoints" / "step"))


class Throughput:
    """Tokens/s and MFU over the steps since the last full log line."""

    def __init__(self, peak: float, world: int):
        self.peak, self.world = peak, world
        self.reset()

    def reset(self):
        self.t, self.tokens, self.flops = time.perf_counter(), 0, 0.0

    def add(self, tokens: int, flops: float):
        self.tokens += tokens
        self.flops += flops

    def take(self) -> tuple[float, float]:
        """(tokens/s, MFU) of the window, which then starts again."""
        dt = time.perf_counter() - self.t
        tps, mfu = self.tokens / dt, self.flops / dt / (self.peak * self.world)
        self.reset()
        return tps, mfu


def _count(run: Run, res, hf_cfg, meter: Throughput) -> tuple[int, float]:
    """Book the step's real tokens and FLOPs; returns (real tokens on this rank, padded fraction)."""
    world, pad = run.accelerator.num_processes, run.layout.pad_id
    real = sum(int((b["input_ids"] != pad).sum()) for b in res.micro)
    run.tokens_seen += real * world
    meter.add(real * world, sum(train_flops(hf_cfg, seq_lens({k: v.cpu() for k, v in b.items()}, pad))
                                for b in res.micro) * world)
    return real, 1 - real / (len(res.micro) * run.cfg.micro_batch * run.seq_len)


def log_step(run: Run, res, padded: float, meter: Throughput, log: RunLog, bar) -> None:
    """metrics.jsonl + trackers: loss and lr every step, throughput every `log_every` (and the first/last)."""
    cfg, step = run.cfg, run.step
    if step % cfg.log_every == 0 or step == cfg.max_steps or step == 1:
        tps, mfu = meter.take()
        bar.set_postfix(loss=f"{res.loss:.3f}", lr=f"{res.lr:.2e}", tok_s=f"{tps:.0f}", mfu=f"{100 * mfu:.1f}%")
        rec = {"step": step, "loss": res.loss, "lr": res.lr, "grad_norm": res.grad_norm, "tokens_per_s": tps,
               "mfu": mfu, "padded_fraction": padded, "tokens_seen": run.tokens_seen, "time": time.time()}
    else:
        rec = {"step": step, "loss": res.loss, "lr": res.lr}
    log_record(log, rec)


def log_record(log: RunLog, rec: dict) -> None:
    log.record("metrics.jsonl", rec)
    log.scalars({k: v for k, v in rec.items() if k not in ("step", "time")}, rec["step"])


def log_start(run: Run, plan, log: RunLog) -> None:
    """One metrics.jsonl line per (re)start of the run: the machine, device and precision of the steps that
    follow, and the wall clock, so a model card can say where and how long a run that moved trained."""
    from lvm_base.hardware import detect

    hw = detect()
    where = hw.cpu_summary() if plan.device_type == "cpu" else str(plan.device)
    log.record("metrics.jsonl", {"step": run.step, "event": "start", "time": time.time(), "machine": where,
                                 "device": str(run.accelerator.device), "precision": plan.precision,
                                 "processes": run.accelerator.num_processes, "tokens_seen": run.tokens_seen})


def maybe_evaluate(run: Run, log: RunLog, bar, last_eval: dict) -> dict:
    """The held-out metrics every `eval_every` steps and at the end (else `last_eval` unchanged)."""
    cfg = run.cfg
    if not cfg.data.eval_shards or not (run.step % cfg.eval_every == 0 or run.step == cfg.max_steps):
        return last_eval
    ev = evaluate(run.model, cfg, run.layout, run.seq_len, run.accelerator, run.amp)
    if ev:
        log_record(log, {"step": run.step, **ev, "tokens_seen": run.tokens_seen, "time": time.time()})
        bar.write(f"step {run.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in ev.items()))
    return ev


REFIT_EVERY = 100  # steps between re-fits of a timed run's horizon: the pace drifts on a shared machine


class TimeBudget:
    """Fits a run's steps into `cfg.max_minutes` of this process: sets `cfg.max_steps` (the lr schedule's
    horizon) from the pace of the steps so far, never above the max_steps the run was configured with,
    and ends the run (horizon = this step) once the minutes are used up."""

    def __init__(self, run: Run, clock=time.perf_counter):
        cfg = run.cfg
        self.clock, self.ceiling, self.start = clock, run.ceiling, run.step
        self.deadline = clock() + cfg.max_minutes * 60
        # before the first fit the horizon is the ceiling, which the warmup's lr does not depend on
        self.fit_at = max(2, min(20, cfg.warmup_steps))
        self.t_first = 0.0  # the pace leaves out this process's first step (allocations, kernel set-up)
        self.pace: float | None = None

    def after_step(self, run: Run, bar) -> None:
        now, n = self.clock(), run.step - self.start - 1
        if n == 0:
            self.t_first = now
        over = now >= self.deadline
        horizon = None
        if over or (n >= self.fit_at and (n - self.fit_at) % REFIT_EVERY == 0):
            self.pace = (now - self.t_first) / n if n > 0 else self.pace
            fit = run.step if over or self.pace is None else run.step + int((self.deadline - now) / self.pace)
            horizon = max(run.step, min(self.ceiling, fit))
        if run.accelerator.num_processes > 1:  # rank 0's clock decides: every rank stops at the same step
            from accelerate.utils import broadcast_object_list

            horizon = broadcast_object_list([horizon], from_process=0)[0]
        if horizon is not None and horizon != run.cfg.max_steps:
            run.cfg.max_steps = bar.total = horizon
            bar.refresh()


def maybe_save(run: Run) -> None:
    cfg = run.cfg
    if run.step % cfg.save_every == 0 or run.step == cfg.max_steps:
        save_checkpoint(run.accelerator, run.model, run.out, run.state(), cfg.keep_last, cfg)


def train(cfg: TrainConfig, resume: bool = False, init_from: str | None = None, progress: bool = True,
          stop_at_step: int | None = None) -> dict:
    """Run (or continue) a training run. Returns {"step", "losses": {step: loss}, "eval": {...}, "out_dir"}.

    `stop_at_step` ends the process-level loop early without a final checkpoint, as a kill would
    (used by the resume test).
    """
    from tqdm import tqdm

    run, plan = setup(cfg, resume, init_from)
    acc, world, dev = run.accelerator, run.accelerator.num_processes, run.accelerator.device
    ds, loader = make_loader(cfg, run.layout, run.seq_len, acc.process_index, world)
    ds.set_position(run.consumed, cfg.micro_batch)
    batches = iter(loader)
    # MFU against the peak of the dtype the matmuls actually run in, on this device.
    hf_cfg = acc.unwrap_model(run.model).config
    peak = cfg.peak_tflops * 1e12 if cfg.peak_tflops else measure_matmul_peak(
        plan.dtype, str(dev), seconds=0.5, linears=linear_shapes(hf_cfg))
    log = RunLog(acc, run.out, run.step)
    log_start(run, plan, log)

    losses, last_eval = {}, {}
    bar = tqdm(total=cfg.max_steps, initial=run.step, disable=not (progress and acc.is_main_process),
               desc="train", dynamic_ncols=True)
    run.model.train()
    meter = Throughput(peak, world)
    budget = TimeBudget(run) if cfg.max_minutes is not None else None
    while run.step < cfg.max_steps:
        if stop_at_step is not None and run.step >= stop_at_step:
            break
        micro = [next(batches) for _ in range(run.accum)]
        run.consumed += run.accum
        micro = [{k: v.to(dev) for k, v in b.items()} for b in micro]
        try:
            res = train_step(acc, run.model, run.optimizer, run.scheduler, micro, cfg, run.layout.vocab_size,
                             run.amp)
        except TrainingDiverged as e:
            good = list_checkpoints(run.out)
            bar.close()
            raise TrainingDiverged(f"{e} at step {run.step + 1}; stopped without updating. Last good checkpoint: "
                                   f"{good[-1] if good else 'none'}. Lower lr or check the data, then --resume.") \
                from None
        run.step += 1
        _, padded = _count(run, res, hf_cfg, meter)
        losses[run.step] = res.loss
        bar.update(1)
        if budget:
            budget.after_step(run, bar)
        log_step(run, res, padded, meter, log, bar)
        last_eval = maybe_evaluate(run, log, bar, last_eval)
        maybe_save(run)
    bar.close()
    log.close()
    if acc.is_main_process and run.step == cfg.max_steps:
        atomic_write_text(run.out / "final.json", json.dumps(
            {**run.state(), "checkpoint": str(list_checkpoints(run.out)[-1]), **last_eval}, indent=1))
    return {"step": run.step, "losses": losses, "eval": last_eval, "out_dir": str(run.out),
            "bad_shards": ds.bad_shards, "max_steps": cfg.max_steps,
            "seconds_per_step": budget.pace if budget else None}
