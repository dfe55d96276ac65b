"""The measuring of `lvm bench train` (lvm/commands/bench_train.py describes the sides and the figures)."""

from __future__ import annotations

from lvm.tokens import DEFAULT_CODEBOOK_SIZE, TOKENS_PER_IMAGE

def _sequences(rng, n_tokens: int, max_images: int):
    """Demo-like visual sequences totalling about n_tokens: half full-length, half 1 .. max-1 images."""
    out, total = [], 0
    while total < n_tokens:
        n = max_images if (max_images == 1 or rng.random() < 0.5) else int(rng.integers(1, max_images))
        out.append(rng.integers(0, DEFAULT_CODEBOOK_SIZE, (n, TOKENS_PER_IMAGE)))
        total += n * TOKENS_PER_IMAGE
    return out


def _ours_side(model_cfg, state_dict, plan, rows: int, seq_len: int):
    """lvm train's step (packing, varlen attention, accelerate mixed precision from `plan`) as a function."""
    import torch

    from lvm.train.packing import IGNORE, collate_rows, pack_sequences, register_packed_attention
    from lvm.train.step import param_groups, token_nll
    from lvm_base.hardware import make_accelerator

    layout = model_cfg.layout
    model = model_cfg.build()
    model.load_state_dict(state_dict)
    model.set_attn_implementation(register_packed_attention())
    model.config.use_cache = False
    model.train()
    acc, amp = make_accelerator(plan)
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-4, betas=(0.9, 0.95))
    model, opt = acc.prepare(model, opt)
    V = layout.vocab_size

    def step(seqs):
        rows_, _ = pack_sequences(seqs, seq_len, layout.pad_id, layout.tokens_per_image)
        batches = [collate_rows(rows_[i:i + rows]) for i in range(0, len(rows_), rows)]
        n_tgt = sum(int((b["targets"] != IGNORE).sum()) for b in batches)
        for b in batches:
            b = {k: v.to(acc.device) for k, v in b.items()}
            with amp:
                loss = token_nll(model, b, V, "varlen").sum() / n_tgt
            acc.backward(loss)
        acc.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return len(rows_)

    return step


def _ref_side(model, device, ref_batch: int, pad_id: int):
    """The plain fp32 loop: HF eager attention on padded batches, HF's own loss."""
    import torch

    from lvm.train.packing import IGNORE
    from lvm.train.step import param_groups

    model.to(device)
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-4, betas=(0.9, 0.95))

    def step(seqs):
        for i in range(0, len(seqs), ref_batch):
            group = seqs[i:i + ref_batch]
            T = max(s.size for s in group)
            ids = torch.full((len(group), T), pad_id, dtype=torch.long)
            mask = torch.zeros((len(group), T), dtype=torch.long)
            for r, s in enumerate(group):
                ids[r, :s.size], mask[r, :s.size] = torch.from_numpy(s.reshape(-1)), 1
            labels = ids.masked_fill(mask == 0, IGNORE)  # HF's ignore_index too
            ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
            model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return 0

    return step


def bench_one(model_cfg, name, seq_len, rows, ref_batch, steps, warmup, seed, plans: dict, peaks: dict) -> dict:
    """One model: the fp32 reference and lvm train's step in each precision of `plans` ({precision: Plan}),
    interleaved. Returns tokens/s and MFU (against the peak of each side's dtype) per side."""
    import time

    import numpy as np
    import torch

    from lvm.train.flops import train_flops

    torch.manual_seed(seed)
    layout = model_cfg.layout
    device = next(iter(plans.values())).device
    ref = model_cfg.build()
    ref.config.use_cache = False
    ref.train()
    sides = {f"ours_{p}": _ours_side(model_cfg, ref.state_dict(), plan, rows, seq_len) for p, plan in plans.items()}
    sides["ref"] = _ref_side(ref, device, ref_batch, layout.pad_id)
    from lvm_base.hardware import synchronize

    sync = lambda: synchronize(device)  # noqa: E731
    rng = np.random.default_rng(seed)
    max_images = seq_len // layout.tokens_per_image
    times = dict.fromkeys(sides, 0.0)
    tokens = flops = n_rows = 0
    first = next(iter(sides))  # every "ours" side packs the same rows
    for i in range(warmup + steps):
        seqs = _sequences(rng, rows * seq_len, max_images)
        order = list(sides.items())
        if i % 2:
            order.reverse()
        for side, fn in order:
            sync()
            t = time.perf_counter()
            r = fn(seqs)
            sync()
            if i >= warmup:
                times[side] += time.perf_counter() - t
                n_rows += r if side == first else 0
        if i >= warmup:
            tokens += sum(s.size for s in seqs)
            flops += train_flops(ref.config, [s.size for s in seqs])
    ref_tps = tokens / times["ref"]
    res = {"model": name, "seq_len": seq_len, "tokens_per_step": tokens // steps, "steps": steps,
           "padded_fraction_ours": 1 - tokens / (n_rows * seq_len),
           "ref": {"precision": "fp32", "tokens_per_s": ref_tps, "mfu": flops / times["ref"] / peaks["fp32"]},
           "ours": {}}
    for p in plans:
        t = times[f"ours_{p}"]
        res["ours"][p] = {"tokens_per_s": tokens / t, "mfu": flops / t / peaks[p], "speedup": tokens / t / ref_tps}
    return res


def _plans(device: str, precisions: str) -> tuple[dict, dict]:
    """({resolved precision: Plan}, {resolved precision: [the names asked for it]}) for a comma list."""
    from lvm_base.hardware import parse_precisions, resolve

    plans, asked = {}, {}
    for p in parse_precisions(precisions):
        plan = resolve(device, p, "training")
        plans.setdefault(plan.precision, plan)
        asked.setdefault(plan.precision, []).append(p)
    return plans, asked


def bench_train(model: str = "tiny,100m", seq_len: int | None = None, rows: int = 2, ref_batch: int = 4,
                steps: int = 3, warmup: int = 1, threads: int = 0, seed: int = 0, out: str | None = None,
                device: str = "auto", precision: str = "auto") -> int:
    """`lvm bench train`: every model of the comma list `model` against the reference; prints the table
    (and writes JSON to `out`)."""
    import json

    from lvm_base.files import atomic_write_text

    res = measure_train(model=model, seq_len=seq_len, rows=rows, ref_batch=ref_batch, steps=steps, warmup=warmup,
                        threads=threads, seed=seed, device=device, precision=precision, echo=print)
    if out:
        atomic_write_text(out, json.dumps(res, indent=1))
    return 0


def measure_train(model: str = "tiny,100m", seq_len: int | None = None, rows: int = 2, ref_batch: int = 4,
                  steps: int = 3, warmup: int = 1, threads: int = 0, seed: int = 0, device: str = "auto",
                  precision: str = "auto", peak_seconds: float = 1.0, echo=None) -> dict:
    """What `bench_train` measures, as the dict its --out writes (peaks and one result per model);
    `echo` (e.g. print) gets the lines of its table as they come."""
    import os
    from pathlib import Path

    import torch

    from lvm_base.config import find_config_file, load_config
    from lvm.train.flops import linear_shapes, measure_matmul_peak
    from lvm.model import ModelConfig
    from lvm_base.hardware import detect, resolve

    echo = echo or (lambda *a, **k: None)
    plans, asked = _plans(device, precision)
    auto = resolve(device, "auto", "training")
    names = [n.strip() for n in model.split(",") if n.strip()]
    cfgs = []
    for n in names:
        path = n if n.endswith((".yaml", ".yml")) else f"configs/model/{n}.yaml"
        cfgs.append((n, load_config(ModelConfig, find_config_file(path))))
    load = os.getloadavg()[0]
    threads = threads or (1 if load > (os.cpu_count() or 1) else torch.get_num_threads())
    torch.set_num_threads(threads)
    device = next(iter(plans.values())).device
    echo(f"cpu: {detect().cpu_summary()}")
    echo(f"device {device}; precision auto -> {auto.precision} for training here; sides: reference fp32, "
         + ", ".join(f"ours {p}" + (f" (asked: {'/'.join(asked[p])})" if asked[p] != [p] else "") for p in plans))
    echo(f"load average before: {load:.2f} on {os.cpu_count()} cores; torch threads {threads} (absolute "
         f"figures vary with load, the interleaved ratio is the fair comparison)")
    linears = list(dict.fromkeys(s for _, c in cfgs for s in linear_shapes(c.to_hf())))
    peaks = {p: measure_matmul_peak(torch.float32 if p == "fp32" else plans[p].dtype, device, seconds=peak_seconds,
                                    linears=linears)
             for p in dict.fromkeys(["fp32", *plans])}
    echo("measured matmul peak: " + ", ".join(f"{p} {v / 1e12:.3f} TFLOP/s" for p, v in peaks.items())
         + f" ({threads} thread(s))")
    results = []
    for name, cfg in cfgs:
        row = seq_len or (4096 if name == "tiny" else 1024)
        row = min(row, cfg.max_position_embeddings)
        r = bench_one(cfg, name, row, rows, ref_batch, steps, warmup, seed, plans, peaks)
        results.append(r)
        ref = r["ref"]
        label = Path(name).stem if name.endswith((".yaml", ".yml")) else name
        echo(f"{label:>6} seq {row}: reference fp32 {ref['tokens_per_s']:8.0f} tok/s (MFU "
             f"{100 * ref['mfu']:.1f}% of fp32 peak)", flush=True)
        for p, o in r["ours"].items():
            side = f"ours {p}" + (" = auto" if "auto" in asked[p] else "")
            echo(f"{'':>6} {side:<20} {o['tokens_per_s']:8.0f} tok/s (MFU {100 * o['mfu']:.1f}% of {p} peak, "
                 f"padding {100 * r['padded_fraction_ours']:.1f}%) | ours/ref {o['speedup']:.2f}x", flush=True)
    echo(f"load average after: {os.getloadavg()[0]:.2f}")
    return {"cpu": detect().cpu_summary(), "device": device, "auto_precision": auto.precision, "asked": asked,
            "peaks": peaks, "results": results}
