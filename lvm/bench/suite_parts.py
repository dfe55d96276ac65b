"""The parts of `lvm bench suite` (lvm/bench/suite.py runs them in its time budget and writes the table).

Each part takes the suite's `Ctx`, returns table rows (`row(...)`) and raises `Skip` with the reason when it
cannot run here. The measuring itself is the benchmarks' (lvm.bench.generate / train / tokenizer) and the
training loop's (lvm.train.loop); a part only picks sizes for the device and reads their results.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

# The micro model of --quick: a one-layer LLaMA that runs the full token contract (256 tokens an image).
MICRO = ("hidden_size: 32\nintermediate_size: 64\nnum_hidden_layers: 1\nnum_attention_heads: 2\n"
         "codebook_size: {K}\nmax_position_embeddings: 512\n")
# A small tokenizer config for --quick (the tokenizer tests' size), as overrides of small-128-f8.yaml.
TINY_TOKENIZER = ["model.resolution=32", "model.channel_mult=[1,2,2]", "model.hidden_channels=32",
                  "model.z_channels=8", "model.embed_dim=8", "model.codebook_size=256", "model.quantizer=l2",
                  "model.color_skip=false"]


class Skip(Exception):
    """A part (or one of its items) that cannot run here; the message is the stated reason."""


@dataclass
class Ctx:
    device: object  # torch.device the suite runs on
    quick: bool
    work: Path  # scratch directory (model YAMLs, token shards, training runs)
    deadline: float  # time.monotonic() by which the suite should end
    echo: object = print  # progress lines
    gpu_name: str = ""

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def micro_yaml(self, codebook: int) -> str:
        path = self.work / f"micro-{codebook}.yaml"
        path.write_text(MICRO.format(K=codebook))
        return str(path)


def row(part: str, item: str, result: str, status: str = "ok", target: str | None = None, **data) -> dict:
    """One line of the suite's table. status: ok | FAIL | skipped | error; target: the bar the project sets
    for the figure, with 'pass' or 'miss' (a performance figure below its bar is reported, not failed)."""
    return {"part": part, "item": item, "result": result, "status": status, "target": target, "data": data}


def _need_cuda(ctx: Ctx, what: str) -> None:
    if not ctx.cuda:
        raise Skip(f"no CUDA device ({what} runs on a GPU; --quick runs the CPU sizes)")


def _model_config(spec: str):
    from lvm.model import ModelConfig
    from lvm_base.config import find_config_file, load_config

    path = spec if spec.endswith((".yaml", ".yml")) else f"configs/model/{spec}.yaml"
    return load_config(ModelConfig, find_config_file(path))


def _params(spec: str) -> int:
    from lvm.train.flops import matmul_params

    hf = _model_config(spec).to_hf()
    return matmul_params(hf) + hf.vocab_size * hf.hidden_size  # + the embedding


def _need_memory(ctx: Ctx, name: str, need: float) -> None:
    from lvm_base.hardware import free_memory

    free = free_memory(ctx.device)
    if free is not None and free < need:
        raise Skip(f"not enough memory for {name} ({free / 2**30:.1f} GiB free, needs ~{need / 2**30:.0f} GiB)")


# ---- lvm env ----

def env(ctx: Ctx) -> list[dict]:
    import torch

    from lvm.env import report

    text = report()
    first = text.splitlines()[0]
    where = str(ctx.device)
    if ctx.cuda:
        free, total = torch.cuda.mem_get_info(ctx.device)
        where += f" {ctx.gpu_name}, {total / 2**30:.0f} GiB ({free / 2**30:.0f} free)"
    return [row("env", "lvm env", f"{first}; suite on {where}", report=text)]


# ---- the engine equals HF greedy decoding ----

def _first_difference(model, prompt, ours, hf_new, K) -> str:
    """Where the two greedy streams part, and HF's logit gap there between its token and ours (a gap at
    the level of rounding is a near-tie that either side may take; a large one is a bug)."""
    import torch

    i = int((ours != hf_new).nonzero()[0])
    dev = next(model.parameters()).device
    seq = torch.cat([prompt.reshape(-1), hf_new[:i]]).view(1, -1).to(dev)
    with torch.no_grad():
        logits = model(seq).logits[0, -1, :K].float()
    gap = float(logits[int(hf_new[i])] - logits[int(ours[i])])
    spread = float(logits.std())
    return f"first difference at token {i} of {hf_new.numel()}; HF's logit gap there {gap:.2e} (logit std {spread:.2f})"


def equal(ctx: Ctx, spec: str) -> list[dict]:
    """The engine's greedy image (fp32, 2 candidates) equals HF generate()'s greedy image token for token,
    once per decoding path: with and without CUDA graphs on CUDA, PyTorch ops and the static step on a CPU."""
    import copy

    import torch

    from lvm.bench.generate import _load
    from lvm.generate.engine import Engine
    from lvm.generate.sampling import Sampling
    from lvm.tokens import TokenLayout

    if spec == "300m":
        _need_cuda(ctx, "300m")
    variants = ([("CUDA graphs", dict(cuda_graphs=True)), ("no graphs", dict(cuda_graphs=False))] if ctx.cuda
                else [("PyTorch ops", dict(kernels=False)), ("static step", dict(static_step=True))])
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # fp32 means fp32 here
    try:
        model, _ = _load(spec, ctx.device, torch.float32)
        layout = TokenLayout.from_vocab_size(model.config.vocab_size)
        K, tpi = layout.codebook_size, layout.tokens_per_image
        n_prompt = 1 if ctx.quick else 2
        prompt = torch.randint(0, K, (n_prompt, tpi), generator=torch.Generator().manual_seed(1))
        gc = copy.deepcopy(model.generation_config)  # the token contract's: ids >= K suppressed, PAD = K
        gc.do_sample, gc.temperature, gc.top_k, gc.top_p = False, None, None, None
        gc.max_new_tokens = tpi
        ids = prompt.reshape(1, -1).to(ctx.device)
        with torch.no_grad():
            hf_new = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=gc)[0, ids.shape[1]:]
        hf_new = hf_new.cpu()
        rows = []
        for name, kw in variants:
            e = Engine(model, layout=layout, precision="fp32", device=str(ctx.device), max_batch=2, **kw)
            out = e.generate(prompt, n_new=1, candidates=2, sampling=Sampling(temperature=0)).images[:, 0]
            same = [int((o == hf_new).sum()) for o in out]
            label = f"{spec if not spec.endswith('.yaml') else 'micro'} fp32, {name}"
            if all(s == tpi for s in same):
                rows.append(row("engine = HF greedy", label, f"{tpi}/{tpi} tokens equal in both candidates "
                                f"({e.describe()})", target="equal: pass"))
            else:
                bad = next(o for o in out if not torch.equal(o, hf_new))
                rows.append(row("engine = HF greedy", label, f"{min(same)}/{tpi} tokens equal; "
                                + _first_difference(model, prompt, bad, hf_new, K), status="FAIL",
                                target="equal: miss"))
            del e
        return rows
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


# ---- lvm bench generate ----

def generate(ctx: Ctx, spec: str) -> list[dict]:
    """Engine vs HF generate() (its default, and static cache + compile) in the precision auto picks here
    (half precision on a GPU), batch 1 and 4; the batch-1 step against the bandwidth roofline."""
    import os

    from lvm.bench.gpus import nominal
    from lvm.bench.generate import measure_generate

    if spec in ("300m", "7b"):
        _need_cuda(ctx, spec)
        _need_memory(ctx, spec, 2.3 * 2 * _params(spec) + 4 * 2**30)  # HF model + engine copy, half precision
    label = "micro" if spec.endswith(".yaml") else spec
    env_kernels = os.environ.get("LVM_KERNELS")
    if ctx.quick:  # the CPU decode kernels' build or load check (ninja) is not what --quick is for
        os.environ["LVM_KERNELS"] = "0"
    try:
        res = measure_generate(model=spec, candidates="1,2" if ctx.quick else "1,4", context=1 if ctx.quick else 7,
                               repeats=1 if ctx.quick else 3, device=str(ctx.device), precision="auto",
                               hf_static=True, echo=ctx.echo)
    finally:
        if env_kernels is None:
            os.environ.pop("LVM_KERNELS", None)
        else:
            os.environ["LVM_KERNELS"] = env_kernels
    static = "HF static+compile" if ctx.cuda else "HF static cache (compiled on CUDA only)"
    rows = []
    for r in res["rows"]:
        text = f"ours {r['ours_tok_s']:.0f} tok/s; HF {r['hf_tok_s']:.0f} ({r['ours_tok_s'] / r['hf_tok_s']:.2f}x)"
        target = None
        if r["hf_static_tok_s"]:
            text += f"; {static} {r['hf_static_tok_s']:.0f} ({r['ours_tok_s'] / r['hf_static_tok_s']:.2f}x)"
            if spec == "7b" and r["batch"] == 1:
                target = "> HF static+compile: " + ("pass" if r["ours_tok_s"] > r["hf_static_tok_s"] else "miss")
        elif res["hf_static_error"]:
            text += f"; {static} failed: {res['hf_static_error'][:120]}"
        rows.append(row("bench generate", f"{label} {r['engine_precision']} batch {r['batch']}", text,
                        target=target, **r))
    _, bw_nominal = nominal(ctx.gpu_name) if ctx.cuda else (None, None)
    for name, rf in res["roofline"].items():
        text = (f"{rf['step_s'] * 1e3:.2f} ms/step vs {rf['ideal_s'] * 1e3:.2f} ms ideal "
                f"({(rf['weight_bytes'] + rf['kv_bytes']) / 1e9:.2f} GB at copy {rf['copy_bandwidth'] / 1e9:.0f} GB/s)"
                f" = {100 * rf['fraction']:.0f}% of roofline")
        data = dict(rf)
        if bw_nominal:
            frac = (rf["weight_bytes"] + rf["kv_bytes"]) / bw_nominal / rf["step_s"]
            text += f"; {100 * frac:.0f}% of the datasheet {bw_nominal / 1e9:.0f} GB/s"
            data["fraction_nominal"] = frac
        target = ("roofline >= 80%: " + ("pass" if rf["fraction"] >= 0.8 else "miss")) if spec == "7b" else None
        rows.append(row("roofline", f"{label} {name} batch 1", text, target=target, **data))
    return rows


# ---- lvm bench train ----

def train(ctx: Ctx, spec: str) -> list[dict]:
    """lvm train's step vs HF's plain fp32 loop: tokens/s and MFU (datasheet bf16 peak where known, and the
    measured matmul peak)."""
    from lvm.bench.gpus import nominal
    from lvm.bench.train import measure_train

    if spec in ("300m", "1b"):
        _need_cuda(ctx, spec)
        # both sides hold fp32 weights, grads and AdamW moments (16 bytes a parameter each) plus activations
        _need_memory(ctx, spec, 2 * 16 * _params(spec) + (12 if spec == "1b" else 8) * 2**30)
    sizes = dict(seq_len=512, rows=1, ref_batch=2, steps=1, warmup=0, peak_seconds=0.25) if ctx.quick else \
        dict(seq_len=2048, rows=8 if spec == "300m" else 4, ref_batch=2 if spec == "300m" else 1, steps=3, warmup=1,
             peak_seconds=1.0)
    res = measure_train(model=spec, device=str(ctx.device), precision="auto", echo=ctx.echo, **sizes)
    r = res["results"][0]
    peak_nominal, _ = nominal(ctx.gpu_name) if ctx.cuda else (None, None)
    label = "micro" if spec.endswith(".yaml") else spec
    rows = []
    for p, o in r["ours"].items():
        achieved = o["mfu"] * res["peaks"][p]
        text = (f"ours {o['tokens_per_s']:.0f} tok/s, MFU {100 * o['mfu']:.1f}% of measured {p} peak "
                f"({res['peaks'][p] / 1e12:.1f} TFLOP/s)")
        target = None
        mfu = o["mfu"]
        if peak_nominal and p in ("bf16", "fp16"):
            mfu = achieved / peak_nominal
            text += f", {100 * mfu:.1f}% of the datasheet {peak_nominal / 1e12:.0f} TFLOP/s"
        if spec == "300m":
            target = "MFU >= 40%: " + ("pass" if mfu >= 0.4 else "miss")
        text += f"; HF fp32 loop {r['ref']['tokens_per_s']:.0f} tok/s ({o['speedup']:.2f}x)"
        rows.append(row("bench train", f"{label} {p} seq {r['seq_len']}, {r['tokens_per_step']} tok/step", text,
                        target=target, mfu_nominal=mfu if peak_nominal else None, peaks=res["peaks"], **r))
    return rows


# ---- lvm bench tokenizer ----

def _importable(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a blocked or half-installed package
        return False


def tokenizer(ctx: Ctx) -> list[dict]:
    """The VQGAN's encode/decode images/s against the taming reference network, same weights."""
    from lvm.bench.tokenizer import measure_tokenizer

    for mod, what in (("taming", "taming not installed (the VQGAN is built from its modules)"),
                      ("PIL", "PIL not installed (the test scenes are drawn with it)")):
        if not _importable(mod):
            raise Skip(what)
    if not ctx.quick:
        _need_cuda(ctx, "the lvm-f16-8192 tokenizer")
    if ctx.quick:
        kw = dict(config="configs/tokenizer/small-128-f8.yaml", overrides=TINY_TOKENIZER, batch_size=2, repeats=1)
    else:
        kw = dict(config="configs/tokenizer/lvm-f16-8192.yaml", batch_size=16, repeats=3)
    res = measure_tokenizer(device=str(ctx.device), precision="auto", echo=ctx.echo, **kw)
    ref, rows = res["reference"], []
    for p, o in res["ours"].items():
        text = (f"encode {o['encode_img_s']:.1f} img/s vs reference {ref['encode_img_s']:.1f} "
                f"({o['encode_speedup']:.2f}x); decode {o['decode_img_s']:.1f} vs {ref['decode_img_s']:.1f} "
                f"({o['decode_speedup']:.2f}x); codes agree {100 * o['codes_agree']:.1f}%, PSNR {o['psnr_db']:.1f} dB")
        name = Path(kw["config"]).stem + (" (tiny)" if ctx.quick else "")
        rows.append(row("bench tokenizer", f"{name} {o['precision']} batch {res['batch']}", text, **o))
    return rows


# ---- lvm train: save, kill, resume ----

def _token_shards(root: Path, K: int) -> Path:
    import numpy as np

    from data_builders.shards import write_token_shard

    def sequences(rng, n, prefix):  # learnable ramps, as the training tests use
        for i in range(n):
            n_img = int(rng.choice([1, 2]))
            toks = (int(rng.integers(K)) + np.arange(n_img * 256)) % K
            yield f"{prefix}_{i}", toks.reshape(n_img, 256), {"kind": "suite"}

    rng = np.random.default_rng(0)
    for s in range(2):
        write_token_shard(root / "train" / f"tokens-{s:06d}.tar", sequences(rng, 12, f"t{s}"))
    return root / "train"


def resume(ctx: Ctx) -> list[dict]:
    """A few steps of lvm train that save, stop as a kill would (no final checkpoint), resume, and equal the
    uninterrupted run: the losses after the stop and the final weights."""
    import torch
    from safetensors.torch import load_file

    from lvm.train.config import TrainConfig
    from lvm.train.loop import list_checkpoints, train as train_loop
    from lvm_base.config import load_config

    K, steps, stop = 64, 4, 2
    shards = _token_shards(ctx.work / "tokens", K)
    precisions = ["auto", "fp16"] if ctx.cuda else ["fp32"]  # fp16: the grad scaler's state resumes too
    rows = []
    for p in precisions:
        def cfg(out):
            over = [f"out_dir={out}", f"data.shards={shards}", f"model.codebook_size={K}",
                    "model.max_position_embeddings=512", "model.hidden_size=96", "model.intermediate_size=128",
                    "model.num_hidden_layers=2", "model.num_attention_heads=4", "micro_batch=2", "lr=3e-3",
                    "min_lr=3e-4", "warmup_steps=2", "peak_tflops=1.0", "log_every=1", "data.shuffle_buffer=8",
                    f"max_steps={steps}", f"save_every={stop}", "eval_every=100", "deterministic=true",
                    f"precision={p}", f"device={ctx.device}", "trackers=none"]
            return load_config(TrainConfig, "configs/train/tiny.yaml", over)

        full = train_loop(cfg(ctx.work / f"full-{p}"), progress=False)
        first = train_loop(cfg(ctx.work / f"killed-{p}"), progress=False, stop_at_step=stop)
        second = train_loop(cfg(ctx.work / f"killed-{p}"), resume=True, progress=False)
        losses = {**first["losses"], **second["losses"]}
        rel = max(abs(losses[k] - full["losses"][k]) / max(abs(full["losses"][k]), 1e-12) for k in full["losses"])
        a = load_file(str(list_checkpoints(ctx.work / f"full-{p}")[-1] / "model.safetensors"))
        b = load_file(str(list_checkpoints(ctx.work / f"killed-{p}")[-1] / "model.safetensors"))
        wdiff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
        wscale = max(float(a[k].float().abs().max()) for k in a)
        ok = sorted(losses) == sorted(full["losses"]) and rel <= 1e-4 and wdiff <= 1e-4 * wscale
        text = (f"{steps} steps, stopped after {stop} and resumed: losses max rel diff {rel:.1e}, final weights "
                f"max abs diff {wdiff:.1e} (of {wscale:.2f})")
        used = load_config(TrainConfig, ctx.work / f"killed-{p}" / "config.yaml").precision
        rows.append(row("train resume", f"tiny {p}" + (f" -> {used}" if used != p else ""), text,
                        status="ok" if ok else "FAIL", target="equal: " + ("pass" if ok else "miss"),
                        losses_full=full["losses"], losses_resumed=losses, max_rel=rel, max_weight_diff=wdiff))
        if ctx.cuda:
            torch.cuda.empty_cache()
    return rows
