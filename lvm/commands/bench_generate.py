"""Time to generate one image (256 tokens) after a 7-image prompt: this engine vs HF `generate()`.

Both sides use the same weights (a randomly initialised model of the chosen config, or --model DIR) and
the same sampling (temperature, top-k 50, ids >= K forbidden; HF gets them as `suppress_tokens`). HF runs
with its default settings: the model as loaded (float32), its default dynamic cache and attention. Runs
alternate ours / HF in one process so background load hits both alike; the median of --repeats runs is
reported. Time includes the prompt's prefill; tokens/s = candidates * 256 / time. The engine decodes
with the compiled CPU kernels of `lvm.kernels` when it can (setup includes their one-time build);
LVM_KERNELS=0 shows the plain-PyTorch engine.

    lvm bench generate --model tiny --batch 1,4
    lvm bench generate --model 100m --batch 1 --repeats 2 --threads 1
"""

from __future__ import annotations


def add_arguments(p):
    p.add_argument("--model", default="tiny",
                   help="config name in configs/model (tiny, 100m, ...), a model YAML, or an HF model directory")
    p.add_argument("--batch", default="1,4", help="comma-separated candidate counts (default 1,4)")
    p.add_argument("--prompt-images", type=int, default=7)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"], help="engine dtype")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--seed", type=int, default=0)


def _load(spec: str):
    from pathlib import Path

    import torch

    from lvm.config import find_config_file, load_config
    from lvm.model import ModelConfig
    from tokenizer.errors import InputError

    p = Path(spec)
    if p.is_dir():
        from transformers import LlamaForCausalLM

        return LlamaForCausalLM.from_pretrained(p, dtype=torch.float32).eval(), str(p)
    yaml = p if p.suffix in (".yaml", ".yml") else Path("configs/model") / f"{spec}.yaml"
    yaml = find_config_file(yaml)
    if not yaml.is_file():
        raise InputError(f"--model {spec}: no such model directory or config ({yaml})")
    torch.manual_seed(0)
    return load_config(ModelConfig, yaml, []).build().eval(), str(yaml)


def run(args):
    import os
    import statistics
    import time

    import torch

    from lvm.generate import Engine, Sampling
    from lvm.tokens import TokenLayout

    if args.threads:
        torch.set_num_threads(args.threads)
    model, where = _load(args.model)
    layout = TokenLayout.from_vocab_size(model.config.vocab_size)
    K, V, tpi = layout.codebook_size, model.config.vocab_size, layout.tokens_per_image
    n_params = sum(p.numel() for p in model.parameters())
    t = time.perf_counter()
    engine = Engine(model, layout=layout, dtype=getattr(torch, args.dtype), max_batch=max(
        int(b) for b in args.batch.split(",")))
    setup = time.perf_counter() - t
    g = torch.Generator().manual_seed(args.seed)
    prompt = torch.randint(0, K, (args.prompt_images, tpi), generator=g)
    samp = Sampling(temperature=args.temperature, top_k=args.top_k, top_p=1.0, seed=args.seed)
    from lvm import kernels

    decode = "compiled CPU decode kernels" if engine.kernels is not None else (
        f"PyTorch decode ops: {kernels.why_not() or 'fp32 engine'}")
    print(f"model {where}: {n_params / 1e6:.1f}M params, vocab {V} (K={K}); prompt {args.prompt_images} images "
          f"({prompt.numel()} tokens) -> 1 image ({tpi} tokens); engine {args.dtype}, {decode} "
          f"(setup {setup:.2f}s), "
          f"HF generate() float32 defaults; torch threads {torch.get_num_threads()}; "
          f"load average {os.getloadavg()[0]:.2f}")

    def ours(b):
        out = engine.generate(prompt, n_new=1, candidates=b, sampling=samp)
        assert out.images.shape == (b, 1, tpi) and int(out.images.max()) < K
        return out.seconds

    def hf(b):
        ids = prompt.reshape(1, -1).expand(b, -1).contiguous()
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                 temperature=args.temperature, top_k=args.top_k, top_p=1.0,
                                 max_new_tokens=tpi, min_new_tokens=tpi, pad_token_id=K,
                                 suppress_tokens=list(range(K, V)))
        dt = time.perf_counter() - t0
        assert out.shape == (b, ids.shape[1] + tpi) and int(out[:, ids.shape[1]:].max()) < K
        return dt

    print(f"{'batch':>5} {'ours s':>8} {'ours tok/s':>10} {'HF s':>8} {'HF tok/s':>9} {'ratio':>6}")
    results = []
    for b in [int(x) for x in args.batch.split(",")]:
        ours(b)  # warm-up: allocation, oneDNN kernel selection
        hf(b)
        to, th = [], []
        for r in range(args.repeats):  # alternate the order so drifting load hits both sides alike
            if r % 2:
                th.append(hf(b)); to.append(ours(b))
            else:
                to.append(ours(b)); th.append(hf(b))
        mo, mh = statistics.median(to), statistics.median(th)
        tok = b * tpi
        results.append((b, tok / mo, tok / mh))
        print(f"{b:>5} {mo:>8.2f} {tok / mo:>10.1f} {mh:>8.2f} {tok / mh:>9.1f} {mh / mo:>5.2f}x", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0
