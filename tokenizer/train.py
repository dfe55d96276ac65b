"""VQGAN training loop (accelerate: CPU, one GPU, or DDP via `accelerate launch`).

Losses (taming's recipe, quantizer loss the right way round): reconstruction (L1 or L2) + LPIPS (when
local VGG weights are given) + quantizer codebook/commitment loss + after `disc_start` a PatchGAN hinge
discriminator whose generator term is scaled by the adaptive weight
||grad nll|| / ||grad g_loss|| at the decoder's last layer.

Several processes (`accelerate launch --num_processes N -m lvm tokenizer train ...` on GPUs; on CPUs
`torchrun --nproc_per_node N -m lvm ...`, since `accelerate launch --cpu` starts one process unless given
an MPI hostfile) train data-parallel (DDP): `batch_size` is per process, so the global batch is
batch_size x grad_accum x processes, and the ranks' batches at a step are the micro-batches one process
with grad_accum x processes would take (tokenizer.data.EpochSampler); logged losses are means over
micro-steps and ranks. What stays per rank: the discriminator's BatchNorm statistics (each rank's own
micro-batch, as in taming), random flips and crops (each rank's RNG), and the "normed" quantizer's
dead-code restarts, which rank 0 decides from its last micro-batch and broadcasts.

Checkpoints, on accelerate's `save_state` / `load_state` (lvm_base.checkpointing):

    ckpt/step-0000200/
        config.json, model.safetensors   the generator in our tokenizer format (load_tokenizer reads it)
        disc.safetensors                 the discriminator
        state/                           accelerator.save_state, written by every rank:
            optimizer.bin, optimizer_1.bin           generator / discriminator Adam (DDP: rank 0 writes)
            custom_checkpoint_0.pkl, _1.pkl          their lr schedules (registered objects)
            random_states_<rank>.pkl                 every rank's RNGs (python, numpy, torch, CUDA)
            scaler.pt                                fp16 grad scaler, when there is one
            progress_<rank>.pt                       ours: data position, skip count, dead-code
                                                     generator and quantizer state of each rank
        state.json                       step, images seen, world size: written last, marks it complete
    ckpt/latest                          the name of the newest complete step directory

Every rank writes into `ckpt/.step-0000200.tmp/`, which the main process renames into place after a
barrier; only then is `latest` replaced (atomically) and older step directories pruned, so a kill at any
moment leaves `latest` naming a complete checkpoint. The newest model is also exported to `out_dir/`
(config.json + model.safetensors), so `load_tokenizer(out_dir)` works. `resume=True` continues from
`latest`.

Device and precision come from `cfg.device` / `cfg.precision` through the hardware policy
(`training_plan`: bf16 where the hardware computes it natively, fp16 with accelerate's gradient scaler on
pre-Ampere GPUs, else fp32); the resolved values are written into the config before it is saved.
"""

from __future__ import annotations

import re
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from lvm_base.errors import InputError
from lvm_base.config import save_config
from lvm_base.hardware import make_accelerator
from lvm_base.schedule import warmup_cosine
from lvm_base.tracking import RunLog, tracker_kwargs
from .train_config import TokenizerTrainConfig
from .train_state import TrainerCheckpoints


def training_plan(cfg: TokenizerTrainConfig):
    """The device/precision Plan a training run of `cfg` uses."""
    from lvm_base.hardware import resolve

    return resolve(cfg.device, cfg.precision, "training")


def training_model(cfg: TokenizerTrainConfig, plan):
    """A fresh VQGAN of cfg.model in the layout that trains fastest in `plan`'s precision."""
    from .model import VQGAN

    model = VQGAN(cfg.model).train()
    if plan.precision == "fp32" and plan.device_type == "cpu":
        model.use_channels_last()  # fp32 oneDNN convolutions are faster channels-last; bf16 ones are not
    return model


def random_crops(x: torch.Tensor, size: int | None) -> torch.Tensor:
    """A random size x size window of each image (B, C, H, W); torch's global RNG, so a resumed run
    (which restores it) cuts the same crops."""
    if not size or size >= min(x.shape[-2:]):
        return x
    b, _, h, w = x.shape
    top = torch.randint(0, h - size + 1, (b,)).tolist()
    left = torch.randint(0, w - size + 1, (b,)).tolist()
    return torch.stack([img[:, t:t + size, l:l + size] for img, t, l in zip(x, top, left)])


def hinge_d_loss(real, fake):
    return 0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())


def adaptive_weight(nll, g_loss, last_layer, disc_weight):
    g1 = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    g2 = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    w = g1.norm() / (g2.norm() + 1e-4)
    return w.clamp(0.0, 1e4).detach() * disc_weight


class Trainer(TrainerCheckpoints):
    def __init__(self, cfg: TokenizerTrainConfig, log=print, progress: bool = True):
        self.cfg, self._log, self.progress = cfg, log, progress
        self.out = Path(cfg.out_dir)
        self.acc = None

    def log(self, *args):
        """`log` of the main process only (every rank runs the same loop)."""
        if self.acc is None or self.acc.is_main_process:
            self._log(*args)

    # ---------- setup ----------
    def _setup(self, resume: bool):
        from accelerate.utils import set_seed

        from .lpips import maybe_lpips

        cfg = self.cfg
        if cfg.data.path is None:
            raise InputError("data.path is not set (a folder of images, a list file or .tar shards)")
        f = cfg.model.downsample
        if cfg.data.crop is not None and (cfg.data.crop < f or cfg.data.crop % f):
            raise InputError(f"data.crop={cfg.data.crop} must be a positive multiple of the downsampling factor {f}")
        self.plan = plan = training_plan(cfg)
        # The steps below autocast with the plan themselves (accelerate's own covers no fp16 on a CPU).
        self.acc, _ = make_accelerator(plan, gradient_accumulation_steps=cfg.grad_accum,
                                       **tracker_kwargs(self.out, cfg.trackers))
        # what auto resolved to goes into the saved config
        cfg.device, cfg.precision = str(self.acc.device), plan.precision
        n = self.acc.num_processes
        self.log(f"training on {self.acc.device} in {plan.precision}"
                 + (f", {n} processes (global batch {cfg.batch_size * cfg.grad_accum * n})" if n > 1 else ""))
        set_seed(cfg.seed + self.acc.process_index)
        self.lpips = maybe_lpips(cfg.loss.lpips_vgg, cfg.loss.lpips_lin)
        cfg.loss.perceptual_used = self.lpips is not None and cfg.loss.perceptual_weight > 0
        if not cfg.loss.perceptual_used:
            self.log("note: training WITHOUT the LPIPS perceptual loss (loss.lpips_vgg / loss.lpips_lin "
                     "not given or weight 0); recorded as loss.perceptual_used=false in the saved config")
        if self.lpips is not None:
            self.lpips.to(self.acc.device)

        from taming.modules.discriminator.model import NLayerDiscriminator, weights_init

        self.model = training_model(cfg, plan)
        self.disc = NLayerDiscriminator(input_nc=3, ndf=cfg.loss.disc_channels, n_layers=cfg.loss.disc_layers)
        self.disc.apply(weights_init)
        self.opt_g = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, betas=cfg.betas,
                                      weight_decay=cfg.weight_decay)
        self.opt_d = torch.optim.Adam(self.disc.parameters(), lr=cfg.lr * cfg.loss.disc_lr_mult, betas=cfg.betas)
        self.sched_g = warmup_cosine(self.opt_g, cfg.warmup_steps, cfg.max_steps, cfg.lr, cfg.min_lr)
        self.sched_d = warmup_cosine(self.opt_d, cfg.warmup_steps, cfg.max_steps, cfg.lr, cfg.min_lr)
        self.step, self.epoch, self.batch_in_epoch, self.images_seen, self.skipped = 0, 0, 0, 0, 0
        self.qgen = torch.Generator().manual_seed(cfg.seed + 17)
        self.resumed_from, self._saved_step = None, None
        self.model, self.disc, self.opt_g, self.opt_d = self.acc.prepare(self.model, self.disc, self.opt_g,
                                                                         self.opt_d)
        # The schedules stay unprepared (accelerate would step them once per process) but are checkpointed.
        self.acc.register_for_checkpointing(self.sched_g, self.sched_d)
        self.acc.register_save_state_pre_hook(self._save_weights_hook)
        self.acc.register_load_state_pre_hook(self._load_weights_hook)
        if resume:
            self._load_latest()
        self._build_data()

    def _build_data(self):
        from torch.utils.data import DataLoader

        from .data import EpochSampler, ImageShards, build_dataset, collate

        cfg, m = self.cfg, self.cfg.model
        ds = build_dataset(cfg.data.path, m.resolution, m.value_range, m.resize_mode, cfg.data.random_flip,
                           self.acc.process_index, self.acc.num_processes, cfg.seed)
        self.sampler = None
        if isinstance(ds, ImageShards):
            ds.seed = cfg.seed + 7919 * self.step  # shards: a resumed run continues with a fresh shuffle
            self.loader = DataLoader(ds, batch_size=cfg.batch_size, collate_fn=collate,
                                     num_workers=cfg.data.num_workers)
        else:
            n = self.acc.num_processes
            if len(ds) < cfg.batch_size * n:
                raise InputError(f"{cfg.data.path}: {len(ds)} images, fewer than batch_size={cfg.batch_size}"
                                 + (f" x {n} processes" if n > 1 else ""))
            self.sampler = EpochSampler(len(ds), cfg.seed, self.acc.process_index, self.acc.num_processes,
                                        cfg.batch_size)
            # its own generator: iterating must not draw from the global RNG, which a resumed run restores
            # at a point where an uninterrupted run holds an open iterator
            self.loader = DataLoader(ds, batch_size=cfg.batch_size, sampler=self.sampler, collate_fn=collate,
                                     num_workers=cfg.data.num_workers, drop_last=True,
                                     generator=torch.Generator().manual_seed(cfg.seed + self.acc.process_index))
        self.val_loader = None
        if cfg.data.eval_path:
            vds = build_dataset(cfg.data.eval_path, m.resolution, m.value_range, m.resize_mode, False, loop=False)
            self.val_loader = DataLoader(vds, batch_size=cfg.batch_size, collate_fn=collate)

    def _batches(self):
        """Endless batches; for file datasets the position (epoch, batch) is tracked for exact resume."""
        while True:
            if self.sampler is not None:
                self.sampler.set_position(self.epoch, self.batch_in_epoch * self.cfg.batch_size)
            for x, skipped in self.loader:
                self.batch_in_epoch += 1
                self.skipped += skipped
                if x is not None:
                    yield x
            self.epoch += 1
            self.batch_in_epoch = 0

    # ---------- loop ----------
    def _eval(self):
        from .evaluate import evaluate, format_metrics

        if self.val_loader is None or not self.acc.is_main_process:
            return None
        model = self.acc.unwrap_model(self.model)
        model.eval()
        r = evaluate(model, self.val_loader, self.lpips, max_images=self.cfg.data.eval_images)
        model.train()
        self.log(f"eval @ step {self.step}: {format_metrics(r)}")
        self.run_log.scalars({f"eval/{k}": r[k] for k in ("psnr", "ssim", "lpips", "codebook_usage",
                                                          "code_perplexity") if r.get(k) is not None}, self.step)
        self.run_log.record("eval.jsonl", {"step": self.step, **r})
        return r

    def _loss(self, x, logs: dict):
        """(generator loss, nll, reconstruction loss, quantizer loss, reconstruction) of batch `x`."""
        cfg = self.cfg
        with self.plan.autocast():
            xrec, qloss, codes = self.model(x)
        xrec = xrec.float()
        rec = (x - xrec).abs() if cfg.loss.recon == "l1" else (x - xrec) ** 2
        rec = rec.mean()
        nll = cfg.loss.recon_weight * rec
        if cfg.loss.perceptual_used:
            lo, hi = cfg.model.value_range
            p = self.lpips((x - lo) / (hi - lo) * 2 - 1, (xrec - lo) / (hi - lo) * 2 - 1).mean()
            nll = nll + cfg.loss.perceptual_weight * p
            logs["lpips"] = p.item()
        return nll + cfg.loss.codebook_weight * qloss, nll, rec, qloss, xrec

    def _step(self, batches, last_layer) -> dict:
        """One optimizer step (grad_accum micro-steps of generator and, after disc_start, discriminator).
        The numbers it returns are means over the micro-steps and the ranks: those of the global batch."""
        cfg, model, disc = self.cfg, self.model, self.disc
        disc_plain = self.acc.unwrap_model(disc)
        sums = {}
        for _ in range(cfg.grad_accum):
            x = random_crops(next(batches), cfg.data.crop).to(self.acc.device)
            logs = {}
            with self.acc.accumulate(model, disc):
                gan_on = self.step >= cfg.loss.disc_start
                loss, nll, rec, qloss, xrec = self._loss(x, logs)
                if gan_on:
                    # The generator's adversarial term: through the discriminator (not its DDP wrapper, which
                    # would all-reduce) with its weights frozen, so this backward leaves them no gradient that
                    # the discriminator's own step would then apply (taming toggles its optimizers alike).
                    disc_plain.requires_grad_(False)
                    try:
                        with self.plan.autocast():
                            g_loss = -disc_plain(xrec).float().mean()
                    finally:
                        disc_plain.requires_grad_(True)
                    d_w = adaptive_weight(nll, g_loss, last_layer, cfg.loss.disc_weight)
                    loss = loss + d_w * g_loss
                    logs["g_loss"], logs["d_weight"] = g_loss.item(), d_w.item()
                self.acc.backward(loss)
                if self.acc.sync_gradients and cfg.grad_clip:
                    self.acc.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                self.opt_g.step()
                self.opt_g.zero_grad(set_to_none=True)
                if gan_on:
                    with self.plan.autocast():
                        d_loss = hinge_d_loss(disc(x).float(), disc(xrec.detach()).float())
                    self.acc.backward(d_loss)
                    self.opt_d.step()
                    self.opt_d.zero_grad(set_to_none=True)
                    logs["d_loss"] = d_loss.item()
            logs.update(loss=loss.item(), rec=rec.item(), q=qloss.item())
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + v
            self.images_seen += x.shape[0] * self.acc.num_processes
        logs = self._mean_over_ranks({k: v / cfg.grad_accum for k, v in sums.items()})
        self.step += 1
        self.sched_g.step()
        self.sched_d.step()
        if cfg.model.quantizer == "normed" and cfg.dead_code_max_idle > 0:
            # every rank calls it; rank 0's codebook is broadcast (and its count logged)
            logs["restarted"] = self.acc.unwrap_model(model).quantize.restart_dead_codes(cfg.dead_code_max_idle,
                                                                                         self.qgen)
        return logs

    def _mean_over_ranks(self, logs: dict) -> dict:
        if self.acc.num_processes == 1:
            return logs
        keys = sorted(logs)  # the same keys on every rank: they depend on the step and the config only
        t = torch.tensor([logs[k] for k in keys], dtype=torch.float64, device=self.acc.device)
        return dict(zip(keys, self.acc.reduce(t, "mean").tolist()))

    def _log_step(self, logs: dict, bar) -> None:
        """Trackers and train_log.jsonl every `log_every` steps (and the first), with images/s since the last."""
        if not self.acc.is_main_process:
            return
        now = time.time()
        if self.step % self.cfg.log_every == 0 or self.step == 1:
            ips = (self.images_seen - self._img_last) / max(now - self._t_last, 1e-9)
            self._t_last, self._img_last = now, self.images_seen
            bar.set_postfix(loss=f"{logs['loss']:.4f}", rec=f"{logs['rec']:.4f}", img_s=f"{ips:.1f}")
            self.run_log.scalars({**{f"train/{k}": v for k, v in logs.items()},
                                  "train/lr": self.sched_g.get_last_lr()[0], "train/images_per_s": ips}, self.step)
            self.run_log.record("train_log.jsonl", {"step": self.step, **logs, "images_per_s": ips})
        bar.update(1)

    def _stop_reason(self, t_start: float) -> str | None:
        cfg = self.cfg
        if self.step >= cfg.max_steps:
            return "max_steps"
        if cfg.max_minutes is not None and (time.time() - t_start) / 60 >= cfg.max_minutes:
            return "max_minutes"
        if cfg.stop_at_step is not None and self.step >= cfg.stop_at_step:
            return "stop_at_step"
        return None

    def _agreed_stop(self, t_start: float) -> str | None:
        """`_stop_reason`, the main process's when a wall-time limit could make the ranks disagree."""
        reason = self._stop_reason(t_start)
        if self.acc.num_processes > 1 and self.cfg.max_minutes is not None:
            from accelerate.utils import broadcast_object_list

            reason = broadcast_object_list([reason], from_process=0)[0]
        return reason

    def train(self, resume: bool = False) -> dict:
        from tqdm import tqdm

        cfg = self.cfg
        # The discriminator's optimizer first steps at disc_start; its schedule still counts every step.
        warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()` before"))
        self._setup(resume)
        if self.acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.out)
        self.run_log = RunLog(self.acc, self.out, self.step)
        last_layer = self.acc.unwrap_model(self.model).decoder.conv_out.weight
        self.model.train()
        self.disc.train()
        t_start = time.time()
        batches = self._batches()
        bar = tqdm(total=cfg.max_steps, initial=self.step, desc="train", unit="step",
                   disable=not (self.acc.is_main_process and self.progress))
        self._t_last, self._img_last = time.time(), self.images_seen
        last_loss = None
        while (stop_reason := self._agreed_stop(t_start)) is None:
            logs = self._step(batches, last_layer)
            last_loss = logs["loss"]
            self._log_step(logs, bar)
            if self.step % cfg.save_every == 0:
                self.save()
            if cfg.eval_every and self.step % cfg.eval_every == 0:
                self._eval()
        bar.close()
        self.save()
        result = None
        if self.val_loader is not None and (not cfg.eval_every or self.step % cfg.eval_every):
            result = self._eval()
        skipped = self.skipped
        if self.acc.num_processes > 1:
            skipped = int(self.acc.reduce(torch.tensor([skipped], device=self.acc.device), "sum").item())
        self.run_log.close()
        if skipped:
            self.log(f"skipped {skipped} unreadable images")
        self.log(f"stopped at step {self.step} ({stop_reason}); weights in {self.out}")
        return {"step": self.step, "last_loss": last_loss, "eval": result, "skipped": skipped,
                "stop": stop_reason}
