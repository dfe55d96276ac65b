"""The measuring of `lvm bench generate` (lvm/commands/bench_generate.py describes the sides and the
roofline)."""

from __future__ import annotations

from lvm.generate.sampling import DEFAULTS


def _load(spec: str, device, dtype):
    """(HF LlamaForCausalLM in eval mode on `device` in `dtype`, where it came from)."""
    from pathlib import Path

    import torch

    from lvm_base.config import find_config_file, load_config
    from lvm.model import ModelConfig
    from lvm_base.errors import InputError

    p = Path(spec)
    if p.is_dir():
        from lvm.checkpoints import load_causal_lm
        from lvm_base.hardware import precision_name

        return load_causal_lm(p, str(device), precision_name(dtype), fp32_on_cpu=False)[0], str(p)
    yaml = p if p.suffix in (".yaml", ".yml") else Path("configs/model") / f"{spec}.yaml"
    yaml = find_config_file(yaml)
    if not yaml.is_file():
        raise InputError(f"--model {spec}: no such model directory or config ({yaml})")
    torch.manual_seed(0)
    cfg = load_config(ModelConfig, yaml, [])
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in place on the device: a 7B never passes through host RAM
    try:
        with torch.device(device):
            model = cfg.build()
    finally:
        torch.set_default_dtype(old)
    return model.eval(), str(yaml)


def copy_bandwidth(device, mib: int = 0) -> float:
    """Bytes per second of a large tensor copy on `device` (read + write), best of a few."""
    import time

    import torch

    n = (mib or (1024 if device.type == "cuda" else 256)) * 2 ** 20
    src = torch.ones(n // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    from lvm_base.hardware import synchronize

    sync = lambda: synchronize(device)  # noqa: E731
    dst.copy_(src)
    sync()
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        dst.copy_(src)
        sync()
        best = min(best, time.perf_counter() - t)
    return 2 * n / best


def step_bytes(engine, position: float, batch: int = 1) -> tuple[float, float]:
    """(weight bytes, KV bytes) one decoding step reads at `position` (the cache up to it, for each row)."""
    mats = [t for w in engine.layers for t in w.values()] + [engine.norm, engine.lm_head]
    weights = sum(t.numel() * t.element_size() for t in mats)
    per_pos = 2 * len(engine.layers) * engine.n_kv * engine.head_dim * engine.k_cache.element_size()
    return float(weights), float(per_pos * (position + 1) * batch)


def bench_generate(model: str = "tiny", candidates: str = "1,4", context: int = 7, repeats: int = 3,
                   temperature: float = DEFAULTS.temperature, top_k: int = DEFAULTS.top_k, threads: int = 0,
                   seed: int = DEFAULTS.seed,
                   device: str = "auto", precision: str = "auto",
                   prompt: str | None = None, tokenizer: str | None = None) -> int:
    """`lvm bench generate`: the engine in each precision of the comma list `precision`, plain and
    speculative, against HF generate() for each candidate count of the comma list `candidates`; prints the
    table and the roofline."""
    measure_generate(model=model, candidates=candidates, context=context, repeats=repeats,
                     temperature=temperature, top_k=top_k, threads=threads, seed=seed, device=device,
                     precision=precision, echo=print, prompt=prompt, tokenizer=tokenizer)
    return 0


def _auto_storage(model, plan) -> bool:
    """Whether precision auto keeps this model's weights in another precision than it computes in."""
    from lvm_base.hardware import with_storage

    return bool(with_storage(plan, 4 * sum(p.numel() for p in model.parameters())).storage)


def _prompt_codes(prompt: str, model_dir: str, tokenizer: str | None, device, layout):
    """The codes (n, tokens per image) of a prompt file's images, encoded by the model's tokenizer (or
    `tokenizer`), and how to name them."""
    from lvm.checkpoints import check_fit, tokenizer_for
    from lvm.prompt.prompts import load_prompt
    from tokenizer import load_tokenizer
    from lvm_base.errors import InputError

    pr = load_prompt(prompt)
    pr.check()
    tok = load_tokenizer(tokenizer_for(model_dir, tokenizer), device=str(device)).eval()
    check_fit(layout, tok)
    if len(pr.images) + 1 > layout.images_per_context:
        raise InputError(f"--prompt {prompt}: {len(pr.images)} images leave no room for a new one in the "
                         f"model's {layout.images_per_context}-image context")
    return tok.encode_images([str(x) for x in pr.images]).cpu(), f"{prompt} ({pr.mode})"


def _hf_static_call(model, device):
    """HF generate() keyword arguments of its static-cache setting, compiled on CUDA: recent transformers
    compile the decoding forward themselves when the cache is static; older ones get the recipe of HF's
    docs (the forward compiled with CUDA graphs), swapped in only around these calls."""
    import contextlib

    import torch
    from transformers import GenerationConfig

    if hasattr(GenerationConfig(), "compile_config") or device.type != "cuda":
        return {"cache_implementation": "static"}, contextlib.nullcontext
    compiled = torch.compile(model.forward, mode="reduce-overhead", fullgraph=True)

    @contextlib.contextmanager
    def swapped():
        plain = model.forward
        model.forward = compiled
        try:
            yield
        finally:
            model.forward = plain

    return {"cache_implementation": "static"}, swapped


def measure_generate(model: str = "tiny", candidates: str = "1,4", context: int = 7, repeats: int = 3,
                     temperature: float = DEFAULTS.temperature, top_k: int = DEFAULTS.top_k, threads: int = 0,
                     seed: int = DEFAULTS.seed,
                     device: str = "auto", precision: str = "auto",
                     hf_static: bool = False, echo=None, prompt: str | None = None, tokenizer: str | None = None,
                     speculative: bool = True) -> dict:
    """What `bench_generate` measures, as a dict (rows per precision and batch, the batch-1 roofline);
    `echo` (e.g. print) gets the lines of its table as they come. `hf_static` adds HF generate() in its
    static-cache + torch.compile setting (the stronger baseline; compiled where HF compiles, on CUDA).
    `prompt` (a prompt file; its images encoded by the model's tokenizer or `tokenizer`) replaces the random
    prompt of `context` images. The engine runs plain (one token per pass: the columns "ours" and the
    roofline) and, with `speculative`, speculative (forward passes per image, tokens kept per pass)."""
    import os
    import statistics
    import time

    import torch

    from lvm.generate.engine import Engine
    from lvm.generate.sampling import Sampling
    from lvm.tokens import TokenLayout
    from lvm_base.hardware import detect, parse_precisions, resolve, synchronize

    echo = echo or (lambda *a, **k: None)

    asked = parse_precisions(precision)
    plans = [resolve(device, p, "inference") for p in asked]  # a missing device is the first error
    device = torch.device(plans[0].device)
    if threads:
        torch.set_num_threads(threads)
    # The HF side: fp32 on a CPU (the reference), else what auto picks for the device.
    hf_plan = resolve(plans[0].device, "fp32" if device.type == "cpu" else "auto", "inference")
    spec = model
    model, where = _load(spec, device, hf_plan.dtype)
    layout = TokenLayout.from_model_config(model.config)
    K, V, tpi = layout.codebook_size, model.config.vocab_size, layout.tokens_per_image
    n_params = sum(p.numel() for p in model.parameters())
    batches = [int(b) for b in candidates.split(",")]
    engines, setup = {}, {}
    # auto and the precision it picks share one engine, unless auto also picks a storage precision
    # (hardware.with_storage: bf16 weights for fp32 arithmetic on a CPU), which an explicit precision never does.
    key = {p: p if p == "auto" and _auto_storage(model, plan) else plan.precision for p, plan in zip(asked, plans)}
    for p, plan in zip(asked, plans):
        if key[p] not in engines:
            t = time.perf_counter()
            engines[key[p]] = Engine(model, layout=layout, precision=p if key[p] == "auto" else plan.precision,
                                     device=plan.device, max_batch=max(batches))
            setup[key[p]] = time.perf_counter() - t
    g = torch.Generator().manual_seed(seed)
    if prompt:
        prompt, prompt_name = _prompt_codes(prompt, spec, tokenizer, device, layout)
    else:
        prompt, prompt_name = torch.randint(0, K, (context, tpi), generator=g), "random"
    samp = Sampling(temperature=temperature, top_k=top_k, top_p=DEFAULTS.top_p, seed=seed)
    hw = detect()
    gpu = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    echo(f"model {where}: {n_params / 1e6:.1f}M params, vocab {V} (K={K}); prompt {prompt.shape[0]} images "
         f"({prompt.numel()} tokens, {prompt_name}) -> 1 image ({tpi} tokens)")
    echo(f"device {device}{gpu}; CPU {hw.cpu_summary()}; torch threads {torch.get_num_threads()}; "
         f"load average {os.getloadavg()[0]:.2f}")
    echo(f"HF generate(): {hf_plan.device} {hf_plan.precision}, its defaults (dynamic cache, "
         f"{getattr(model.config, '_attn_implementation', None) or 'default'} attention)")
    names, eng = {}, {}
    for p, plan in zip(asked, plans):
        names[p] = f"{p}->{plan.precision}" if p == "auto" else p
        eng[p] = e = engines[key[p]]
        echo(f"engine {names[p]}: {e.describe()} (setup {setup[key[p]]:.2f}s)")

    def ours(e, b, speculate=False):
        out = e.generate(prompt, n_new=1, candidates=b, sampling=samp, speculative=None if speculate else 0)
        assert out.images.shape == (b, 1, tpi) and int(out.images.max()) < K
        return out

    def hf(b, kw=None):
        ids = prompt.reshape(1, -1).expand(b, -1).contiguous().to(device)
        synchronize(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            sample = (dict(do_sample=True, temperature=temperature, top_k=top_k, top_p=DEFAULTS.top_p)
                      if temperature else dict(do_sample=False))
            out = model.generate(ids, attention_mask=torch.ones_like(ids), **sample,
                                 max_new_tokens=tpi, min_new_tokens=tpi, pad_token_id=K,
                                 suppress_tokens=list(range(K, V)), **(kw or {}))
        out = out.cpu()
        dt = time.perf_counter() - t0
        assert out.shape == (b, ids.shape[1] + tpi) and int(out[:, ids.shape[1]:].max()) < K
        return dt

    hf_kw, hf_ctx, hf_static_error = ({}, None, None)
    if hf_static:
        hf_kw, hf_ctx = _hf_static_call(model, device)
    hf_cols = f" {'HF static tok/s':>15} {'ratio':>6}" if hf_static else ""
    spec_cols = (f" {'spec tok/s':>10} {'passes/img':>10} {'kept/pass':>9} {'spec/ours':>9} {'decode':>7}"
                 if speculative else "")
    echo(f"{'precision':>12} {'batch':>5} {'ours s':>8} {'ours tok/s':>10} {'HF s':>8} {'HF tok/s':>9} {'ratio':>6}"
         + hf_cols + spec_cols)
    decode = {}  # precision asked -> median decoding seconds per step at batch 1
    rows = []
    for b in batches:
        hf(b)  # warm-up: allocation, kernel selection, graph capture
        for p in asked:
            ours(eng[p], b)
            if speculative:
                ours(eng[p], b, speculate=True)  # and the graphs of its pass shapes
        th, ts, to, tsp = [], [], {p: [] for p in asked}, {p: [] for p in asked}
        if hf_static and hf_static_error is None:
            try:  # warm-up: the static cache and the compile; a failing compile is a result, not a crash
                with hf_ctx():
                    hf(b, hf_kw)
            except Exception as e:  # noqa: BLE001 - any compiler error ends only this side
                from lvm_base.errors import one_line

                hf_static_error = f"{type(e).__name__}: {one_line(e)}"[:300]
                echo(f"HF static cache + compile failed: {hf_static_error}")
        for r in range(repeats):  # alternate the order so drifting load hits all sides alike
            order = list(asked) if r % 2 == 0 else list(reversed(asked))
            if r % 2 == 0:
                th.append(hf(b))
            for p in order:
                to[p].append(ours(eng[p], b))
                if speculative:
                    tsp[p].append(ours(eng[p], b, speculate=True))
            if r % 2:
                th.append(hf(b))
            if hf_static and hf_static_error is None:
                with hf_ctx():
                    ts.append(hf(b, hf_kw))
        mh = statistics.median(th)
        ms = statistics.median(ts) if ts else None
        tok = b * tpi
        for p in asked:
            mo = statistics.median(o.seconds for o in to[p])
            if b == 1:
                decode[p] = statistics.median((o.seconds - o.prefill_seconds) / (tpi - 1) for o in to[p])
            extra = "" if not hf_static else (f" {'failed':>15} {'-':>6}" if ms is None else
                                              f" {tok / ms:>15.1f} {ms / mo:>5.2f}x")
            sp = {}
            if speculative:  # the median run's figures
                o = sorted(tsp[p], key=lambda o: o.seconds)[len(tsp[p]) // 2]
                # The same ratio without the prompt's prefill, which both decodings share.
                dec = (statistics.median(x.seconds - x.prefill_seconds for x in to[p]) /
                       statistics.median(x.seconds - x.prefill_seconds for x in tsp[p]))
                sp = {"spec_s": o.seconds, "spec_tok_s": tok / o.seconds, "spec_draft": o.draft,
                      "spec_passes_per_image": o.passes_per_image, "spec_acceptance": o.acceptance_length,
                      "spec_decode_speedup": dec}
                extra += (f" {tok / o.seconds:>10.1f} {o.passes_per_image:>10.1f} {o.acceptance_length:>9.2f} "
                          f"{mo / o.seconds:>8.2f}x {dec:>6.2f}x")
            echo(f"{names[p]:>12} {b:>5} {mo:>8.2f} {tok / mo:>10.1f} {mh:>8.2f} {tok / mh:>9.1f} "
                 f"{mh / mo:>5.2f}x" + extra, flush=True)
            rows.append({"precision": names[p], "engine_precision": eng[p].plan.precision, "batch": b,
                         "ours_s": mo, "ours_tok_s": tok / mo, "hf_s": mh, "hf_tok_s": tok / mh,
                         "hf_static_s": ms, "hf_static_tok_s": tok / ms if ms else None, **sp})
    roofline = {}
    if decode:
        bw = copy_bandwidth(device)
        position = prompt.numel() + (tpi - 1) / 2  # the mean position of the new image's steps
        for p in asked:
            w, kv = step_bytes(eng[p], position)
            ideal = (w + kv) / bw
            roofline[names[p]] = {"weight_bytes": w, "kv_bytes": kv, "copy_bandwidth": bw, "ideal_s": ideal,
                                  "step_s": decode[p], "fraction": ideal / decode[p]}
            echo(f"roofline {names[p]} batch 1: {(w + kv) / 1e6:.1f} MB per step (weights {w / 1e6:.1f} + KV "
                 f"{kv / 1e6:.1f}) / copy bandwidth {bw / 1e9:.1f} GB/s = {ideal * 1e3:.3f} ms; measured "
                 f"{decode[p] * 1e3:.3f} ms per step -> {100 * ideal / decode[p]:.0f}% of roofline")
    echo(f"load average after: {os.getloadavg()[0]:.2f}")
    return {"model": where, "params": n_params, "device": str(device), "gpu": gpu.strip(" ()"),
            "hf_precision": hf_plan.precision, "engines": {names[p]: eng[p].describe() for p in asked},
            "setup_s": setup, "prompt_tokens": prompt.numel(), "rows": rows, "roofline": roofline,
            "hf_static_error": hf_static_error}
