"""Training throughput of lvm train's step against a plain reference loop, side by side in one process.

Both sides train the same model (same initial weights) on the same visual sequences each step (a
demo-like mix of lengths: half full-context sequences, half 1 .. n-1 images):
  ours       lvm train's step: sequences packed into rows (lvm.packing), packed "varlen" attention,
             bf16 autocast through accelerate, token-mean loss, AdamW + clip;
  reference  the same HF LlamaForCausalLM in fp32, eager mode (no compile, HF's default attention),
             batches of `--ref-batch` sequences padded to the longest, labels -100 on padding, AdamW + clip.
Steps alternate (ours, ref, ref, ours, ...) so machine load affects both alike. tokens/s counts real
(non-padding) tokens; MFU = model FLOPs (lvm.flops: 6 x matmul params per token + causal attention)
per second over this device's bf16 matmul peak, measured here (fp32 peak shown for reference).

examples:
  lvm bench train --model tiny
  lvm bench train --model tiny,100m --seq-len 1024 --steps 3
"""


def add_arguments(p):
    p.add_argument("--model", default="tiny,100m",
                   help="comma-separated model configs: names in configs/model/ or YAML paths (default tiny,100m)")
    p.add_argument("--seq-len", type=int, default=None,
                   help="row length in tokens (multiple of 256; default: 4096 for tiny, 1024 otherwise)")
    p.add_argument("--rows", type=int, default=2, help="packed rows of tokens per step (default 2)")
    p.add_argument("--ref-batch", type=int, default=4, help="sequences per padded reference batch (default 4)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per side (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per side first (default 1)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads (default 0 = auto: 1 when the load average exceeds the cores, since "
                        "multi-threaded kernels then stall on descheduled threads at every op)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also write the results as JSON")


def _sequences(rng, n_tokens: int, max_images: int):
    """Demo-like visual sequences totalling about n_tokens: half full-length, half 1 .. max-1 images."""
    import numpy as np

    out, total = [], 0
    while total < n_tokens:
        n = max_images if (max_images == 1 or rng.random() < 0.5) else int(rng.integers(1, max_images))
        out.append(rng.integers(0, 8192, (n, 256)))
        total += n * 256
    return out


def bench_one(model_cfg, name, seq_len, rows, ref_batch, steps, warmup, seed, peak_bf16, peak_fp32):
    import time

    import numpy as np
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from lvm.flops import train_flops
    from lvm.packing import collate_rows, pack_sequences, register_packed_attention
    from lvm.trainer import param_groups, token_nll

    torch.manual_seed(seed)
    layout = model_cfg.layout
    ref = model_cfg.build()
    ours = model_cfg.build()
    ours.load_state_dict(ref.state_dict())
    ours.set_attn_implementation(register_packed_attention())
    for m in (ref, ours):
        m.config.use_cache = False
        m.train()
    opt_kw = dict(lr=1e-4, betas=(0.9, 0.95))
    AcceleratorState._reset_state()
    acc = Accelerator(mixed_precision="bf16")
    ours_opt = torch.optim.AdamW(param_groups(ours, 0.1), **opt_kw)
    ours, ours_opt = acc.prepare(ours, ours_opt)
    ref_opt = torch.optim.AdamW(param_groups(ref, 0.1), **opt_kw)
    rng = np.random.default_rng(seed)
    max_images = seq_len // layout.tokens_per_image
    V = layout.vocab_size

    def step_ours(seqs):
        rows_, _ = pack_sequences(seqs, seq_len, layout.pad_id, layout.tokens_per_image)
        batches = [collate_rows(rows_[i:i + rows]) for i in range(0, len(rows_), rows)]
        n_tgt = sum(int((b["targets"] != -100).sum()) for b in batches)
        for b in batches:
            acc.backward(token_nll(ours, b, V, "varlen").sum() / n_tgt)
        acc.clip_grad_norm_(ours.parameters(), 1.0)
        ours_opt.step()
        ours_opt.zero_grad(set_to_none=True)
        return len(rows_)

    def step_ref(seqs):
        for i in range(0, len(seqs), ref_batch):
            group = seqs[i:i + ref_batch]
            T = max(s.size for s in group)
            ids = torch.full((len(group), T), layout.pad_id, dtype=torch.long)
            mask = torch.zeros((len(group), T), dtype=torch.long)
            for r, s in enumerate(group):
                ids[r, :s.size], mask[r, :s.size] = torch.from_numpy(s.reshape(-1)), 1
            labels = ids.masked_fill(mask == 0, -100)
            loss = ref(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
        ref_opt.step()
        ref_opt.zero_grad(set_to_none=True)

    times = {"ours": 0.0, "ref": 0.0}
    tokens = flops = 0
    n_rows = 0
    for i in range(warmup + steps):
        seqs = _sequences(rng, rows * seq_len, max_images)
        order = [("ours", step_ours), ("ref", step_ref)]
        if i % 2:
            order.reverse()
        for side, fn in order:
            t = time.perf_counter()
            r = fn(seqs)
            dt = time.perf_counter() - t
            if i >= warmup:
                times[side] += dt
                if side == "ours":
                    n_rows += r
        if i >= warmup:
            tokens += sum(s.size for s in seqs)
            flops += train_flops(ref.config, [s.size for s in seqs])
    res = {"model": name, "seq_len": seq_len, "tokens_per_step": tokens // steps, "steps": steps,
           "padded_fraction_ours": 1 - tokens / (n_rows * seq_len)}
    for side in ("ours", "ref"):
        res[f"{side}_tokens_per_s"] = tokens / times[side]
        res[f"{side}_mfu_bf16_peak"] = flops / times[side] / peak_bf16
    res["ref_mfu_fp32_peak"] = flops / times["ref"] / peak_fp32
    res["speedup"] = res["ours_tokens_per_s"] / res["ref_tokens_per_s"]
    return res


def run(args):
    import json
    import os

    import torch

    from lvm.config import find_config_file, load_config
    from lvm.flops import measure_matmul_peak
    from lvm.model import ModelConfig
    from tokenizer.files import atomic_write_text

    names = [n.strip() for n in args.model.split(",") if n.strip()]
    cfgs = []
    for n in names:
        path = n if n.endswith((".yaml", ".yml")) else f"configs/model/{n}.yaml"
        cfgs.append((n, load_config(ModelConfig, find_config_file(path))))
    load = os.getloadavg()[0]
    threads = args.threads or (1 if load > (os.cpu_count() or 1) else torch.get_num_threads())
    torch.set_num_threads(threads)
    print(f"load average before: {load:.2f} on {os.cpu_count()} cores; torch threads {threads} (absolute "
          f"figures vary with load, the interleaved ratio is the fair comparison)")
    peak_bf16 = measure_matmul_peak(torch.bfloat16, seconds=2.0)
    peak_fp32 = measure_matmul_peak(torch.float32, seconds=2.0)
    print(f"measured matmul peak: bf16 {peak_bf16 / 1e12:.3f} TFLOP/s, fp32 {peak_fp32 / 1e12:.3f} TFLOP/s "
          f"(2048^3 matmul, {threads} thread(s))")
    results = []
    for name, cfg in cfgs:
        seq_len = args.seq_len or (4096 if name == "tiny" else 1024)
        seq_len = min(seq_len, cfg.max_position_embeddings)
        r = bench_one(cfg, name, seq_len, args.rows, args.ref_batch, args.steps, args.warmup, args.seed,
                      peak_bf16, peak_fp32)
        results.append(r)
        print(f"{name:>6} seq {seq_len}: ours {r['ours_tokens_per_s']:8.0f} tok/s (MFU {100 * r['ours_mfu_bf16_peak']:.1f}% "
              f"of bf16 peak, padding {100 * r['padded_fraction_ours']:.1f}%) | reference "
              f"{r['ref_tokens_per_s']:8.0f} tok/s (MFU {100 * r['ref_mfu_bf16_peak']:.1f}% of bf16 peak, "
              f"{100 * r['ref_mfu_fp32_peak']:.1f}% of fp32 peak) | ours/ref {r['speedup']:.2f}x", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if args.out:
        atomic_write_text(args.out, json.dumps({"peak_bf16": peak_bf16, "peak_fp32": peak_fp32,
                                                "results": results}, indent=1))
    return 0
