"""Fast image generation for any HF `LlamaForCausalLM` checkpoint: complete a visual sequence image by image.

The model's weights are copied once into a small gpt-fast style decoder (fused QKV and gate/up matrices)
with a static, preallocated KV cache on the model's device. One decoding step is ~15 torch ops per layer
and no HF machinery (no cache objects, logits processors or stopping criteria), which is where HF
`generate()` spends most of its time on small models.

Device and precision come from the policy (`tokenizer.common.hardware.resolve`, `engine.plan`):
- the prompt (prefill, many tokens at once) runs in the plan's dtype: big matrix products;
- on a CPU, one-token decoding steps run fp32 activations (norms, rope, residual stream) and keep the
  weight matrices in the plan's dtype: one-row products are bandwidth-bound, so half the bytes is nearly
  half the time where bf16 is native. The compiled CPU kernels of `lvm.generate.kernels` stream the weights and
  the KV cache (bf16 or fp32, as the plan says) with fp32 arithmetic, attention in one pass; ~2x
  PyTorch's bandwidth on these shapes. Without them (no compiler, LVM_KERNELS=0) decoding uses PyTorch
  ops over an fp32 KV cache: PyTorch's one-query attention over 1,800 bf16 keys took ~1 ms per layer on
  Zen4 against ~0.16 ms in fp32;
- on CUDA (and MPS), decoding runs PyTorch ops (SDPA) in the plan's dtype as a graph-safe step with a
  static cache span, captured once per batch size and span as a CUDA graph and replayed (gpt-fast).

Token contract (docs/released-lvm.md section 1): a sequence is raw image tokens, 256 per image, image i at
positions 256*i .. 256*i+255 from the start of the sequence, no BOS. When the prompt plus the next image
would pass the context, the sequence is cut to its last `context_images - 1` whole images (positions restart
at 0, as the released inference does) and the caller is told how many images were dropped. Ids >= K are
never sampled: their logits are masked before temperature / top-k / top-p.

Each candidate has its own torch.Generator on the engine's device (seed = seed + candidate index by
default), so a candidate's image does not depend on which other candidates share its batch.

    engine = Engine.from_pretrained("runs/lvm", device="auto", precision="auto")   # or Engine(hf_model)
    out = engine.generate(prompt_codes, n_new=1, candidates=4, sampling=Sampling(temperature=1.0))
    out.images  # long (4, 1, 256)
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from lvm.tokens import TokenLayout
from tokenizer.common.errors import InputError
from tokenizer.common.hardware import precision_name, synchronize


@dataclass
class Sampling:
    """How the next token is drawn. temperature 0 = greedy; top_k 0 = off; top_p 1.0 = off."""

    temperature: float = 1.0
    top_k: int = 50  # the released inference samples from the top 50
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if self.temperature < 0:
            raise InputError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise InputError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise InputError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass
class Generation:
    """Result of `Engine.generate`: new images' codes (candidates, n_new, 256) and what happened."""

    images: torch.Tensor
    dropped_images: int = 0  # prompt/earlier images cut to fit the context
    seconds: float = 0.0
    new_tokens: int = 0
    notes: list[str] = field(default_factory=list)
    prefill_seconds: float = 0.0  # the first token of the first image, which includes the prompt's prefill

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else float("nan")


ProgressFn = Callable[[int, int, float], None]  # (image index, tokens done in this image, tokens/s so far)


def _decode_weight(w: torch.Tensor) -> torch.Tensor:
    """What the CPU's one-token decoding uses of `w`: vectors (norm weights) in fp32, matrices as they are."""
    return w.float() if w.ndim == 1 else w


def _linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x @ w.T in x's dtype, whatever dtype w is kept in."""
    return F.linear(x, w) if w.dtype == x.dtype else F.linear(x.to(w.dtype), w).to(x.dtype)


def _add_bias(y: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    return y if b is None else y + b


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, T: int, scale: float) -> torch.Tensor:
    """PyTorch twin of the `attend` kernel: one query per head (B, H, hd) over the first T cached positions."""
    H, Hkv = q.shape[1], k.shape[1]
    return F.scaled_dot_product_attention(q[:, :, None], k[:, :, :T], v[:, :, :T], scale=scale,
                                          enable_gqa=Hkv != H)[:, :, 0]


def _hand_over(lins, fused: torch.Tensor) -> None:
    """Make the model's unfused weights views of the fused matrix (the model keeps working and nothing is held
    twice), or free them where the engine's copy has another dtype or device."""
    row = 0
    for lin in lins:
        n = lin.weight.shape[0]
        if lin.weight.dtype == fused.dtype and lin.weight.device == fused.device:
            lin.weight.data = fused[row:row + n]
        else:
            lin.weight.data = torch.empty(0, dtype=lin.weight.dtype, device=lin.weight.device)
        row += n


def _layer_weights(layer, dtype, device, consume: bool = False):
    at, mlp = layer.self_attn, layer.mlp
    for lin in (mlp.gate_proj, mlp.up_proj, mlp.down_proj):
        if getattr(lin, "bias", None) is not None:
            raise InputError("MLP biases are not supported (LLaMA has none)")
    # Same dtype and device: no copy, the engine shares the model's tensor.
    cast = lambda t: t.detach().to(device=device, dtype=dtype).contiguous()  # noqa: E731
    fuse = lambda lins: torch.cat([cast(lin.weight) for lin in lins])  # noqa: E731
    qkv, gate_up = (at.q_proj, at.k_proj, at.v_proj), (mlp.gate_proj, mlp.up_proj)
    w = dict(
        attn_norm=cast(layer.input_layernorm.weight),
        wqkv=fuse(qkv),
        wo=cast(at.o_proj.weight),
        mlp_norm=cast(layer.post_attention_layernorm.weight),
        w13=fuse(gate_up),
        w2=cast(mlp.down_proj.weight),
    )
    if at.q_proj.bias is not None:  # HF Llama's attention_bias (grid heads, lvm.model)
        w["bqkv"] = cast(torch.cat([at.q_proj.bias, at.k_proj.bias, at.v_proj.bias]))
        w["bo"] = cast(at.o_proj.bias)
    if consume:  # loading a big model never holds its weights twice
        _hand_over(qkv, w["wqkv"])
        _hand_over(gate_up, w["w13"])
    return w


class Engine:
    """A LLaMA decoder with a static KV cache, built from the weights of an HF `LlamaForCausalLM`.

    `device` (None = the model's) and `precision` (auto | fp32 | bf16 | fp16) go through the policy,
    `tokenizer.common.hardware.resolve`; `engine.plan` records the outcome. Decoding one token:
    - on a CPU: fp32 activations, the weight matrices in the plan's dtype, the compiled kernels of
      `lvm.generate.kernels` for bf16 and fp32 engines (PyTorch ops without them);
    - elsewhere (CUDA, MPS): PyTorch ops in the plan's dtype, as a graph-safe step (`_step_static`: the
      position is a tensor, attention runs over a static span of the cache under a position mask), which
      on CUDA is captured once per (batch, span) as a CUDA graph and replayed (`cuda_graphs=True`).
    `static_step=True` runs that step on a CPU too (the code the graph captures, testable without a GPU).
    `consume=True` turns the model's q/k/v/gate/up weights into views of the fused matrices (or frees them
    where dtype or device differ), so a big model is never held twice.
    """

    SPAN = 256  # the static step attends over the cache in blocks of one image: one graph per image

    def __init__(self, model, layout: TokenLayout | None = None, precision: str = "auto", device=None,
                 max_batch: int = 8, max_context: int | None = None, consume: bool = False,
                 kernels: bool = True, cuda_graphs: bool = True, static_step: bool | None = None,
                 dtype=None):
        from tokenizer.common.hardware import resolve

        cfg = model.config
        if getattr(cfg, "hidden_act", "silu") != "silu":
            raise InputError(f"only SiLU LLaMA models are supported, got hidden_act={cfg.hidden_act}")
        if dtype is not None:  # the older keyword: a torch dtype (or its name) instead of a precision
            precision = precision_name(dtype)
        here = next(model.parameters()).device
        self.plan = resolve(str(device or here), precision, "inference")
        self.device = torch.device(self.plan.device)
        self.dtype = self.plan.dtype
        self.config = cfg
        self.vocab_size = cfg.vocab_size
        self.layout = layout or TokenLayout.from_vocab_size(cfg.vocab_size)
        if self.layout.vocab_size > cfg.vocab_size:
            raise InputError(f"model vocabulary {cfg.vocab_size} is smaller than the token layout's "
                             f"{self.layout.vocab_size} (codebook {self.layout.codebook_size} + reserved)")
        self.n_heads = cfg.num_attention_heads
        self.n_kv = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.eps = cfg.rms_norm_eps
        self.context = max_context or cfg.max_position_embeddings
        tpi = self.layout.tokens_per_image
        self.context_images = self.context // tpi
        if self.context_images < 2:
            raise InputError(f"context {self.context} holds fewer than 2 images of {tpi} tokens")
        dev, dt = self.device, self.dtype
        with torch.no_grad():
            m = model.model
            self.embed = m.embed_tokens.weight.detach().to(device=dev, dtype=dt).contiguous()
            self.layers = [_layer_weights(l, dt, dev, consume) for l in m.layers]
            self.norm = m.norm.weight.detach().to(device=dev, dtype=dt).contiguous()
            self.lm_head = model.lm_head.weight.detach().to(device=dev, dtype=dt).contiguous()
            # The model's own rotary module gives cos/sin for every position, so any rope variant the
            # checkpoint's config asks for (scaling, theta) is reproduced exactly.
            pos = torch.arange(self.context, device=here).unsqueeze(0)
            probe = torch.zeros(1, 1, self.head_dim, dtype=torch.float32, device=here)
            cos, sin = m.rotary_emb(probe, pos)
            self.cos, self.sin = cos[0].to(device=dev, dtype=dt), sin[0].to(device=dev, dtype=dt)  # (T, hd)
            self.cos32, self.sin32 = cos[0].to(device=dev, dtype=torch.float32), sin[0].to(dev, torch.float32)
        on_cpu = dev.type == "cpu"
        self.static = (not on_cpu) if static_step is None else bool(static_step)
        if not self.static:
            # CPU decoding (class doc): fp32 norm weights, the matrices as they are.
            self.dec_layers = [{k: _decode_weight(v) for k, v in w.items()} for w in self.layers]
            self.dec_norm = self.norm.float()
        # The compiled kernels are CPU code for bf16 or fp32 weights; everything else decodes with PyTorch.
        self.kernels = None
        if kernels and on_cpu and not self.static and dt in (torch.bfloat16, torch.float32):
            from lvm.generate import kernels as _k

            self.kernels = _k.load()
        self._no_kernels = "kernels=False" if not kernels else (
            f"no kernels for {self.plan.precision}" if self.kernels is None and dt == torch.float16 else None)
        if self.kernels is None and self._no_kernels is None and on_cpu and not self.static:
            from lvm.generate import kernels as _k

            self._no_kernels = _k.why_not() or "kernels unavailable"
        # PyTorch's CPU attention for one query over a bf16 cache is slow (module doc): fp32 cache without kernels.
        self.cache_dtype = dt if (self.static or self.kernels is not None) else torch.float32
        self.cuda_graphs = bool(cuda_graphs) and dev.type == "cuda" and self.static
        self.notes: list[str] = list(self.plan.notes)
        self._graphs: dict = {}
        self._pool = None
        self._positions = torch.arange(self.context, device=dev)
        self._pos = torch.zeros(1, dtype=torch.long, device=dev)
        self.max_batch = 0
        self.k_cache = self.v_cache = None
        # Accelerator memory is precious (a 7B cache row is 2 GB): one row now, more when a batch asks.
        self._alloc(max_batch if on_cpu else 1)

    @classmethod
    def from_pretrained(cls, path, device: str | None = "auto", precision: str = "auto", **kw) -> "Engine":
        """Load an HF Llama directory (ours or the released LVM layout) straight onto the device in the
        plan's precision (a half-precision 7B never has an fp32 copy in RAM) and into the engine."""
        from lvm.checkpoints import load_causal_lm

        if kw.get("dtype") is not None:
            precision = precision_name(kw.pop("dtype"))
        kw.pop("dtype", None)
        model, plan = load_causal_lm(path, device, precision, fp32_on_cpu=False)
        engine = cls(model, precision=plan.precision, device=plan.device, consume=True, **kw)
        engine.plan = plan  # what was asked for, and what it resolved to
        return engine

    # ---- cache ----
    def _alloc(self, batch: int):
        if batch <= self.max_batch:
            return
        shape = (len(self.layers), batch, self.n_kv, self.context, self.head_dim)
        self.k_cache = self.v_cache = None  # the old cache goes before the new one comes
        self._graphs = {}  # captured graphs point into the old cache
        if self.device.type == "cuda":
            need = 2 * math.prod(shape) * torch.empty(0, dtype=self.cache_dtype).element_size()
            free = torch.cuda.mem_get_info(self.device)[0]
            if need > free:
                raise InputError(f"the KV cache for {batch} candidate(s) needs {need / 2 ** 30:.1f} GiB, "
                                 f"{free / 2 ** 30:.1f} GiB are free on {self.device}; use fewer candidates")
        self.k_cache = torch.zeros(shape, dtype=self.cache_dtype, device=self.device)
        self.v_cache = torch.zeros(shape, dtype=self.cache_dtype, device=self.device)
        self.max_batch = batch

    # ---- the decoder ----
    def _norm(self, x, w):
        if x.dtype == torch.float32 or (x.dtype == torch.bfloat16 and x.device.type == "cpu"):
            # Written out: F.rms_norm's bf16 path costs ~3x these four ops on one CPU row.
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * w
        # Half precision off the CPU: statistics in fp32 as HF does (fp16 squares overflow past 256).
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * w

    def _rope(self, x, cos, sin):
        # HF Llama's rotate-half convention: (x1, x2) -> (x1*cos - x2*sin, x2*cos + x1*sin).
        h = x.shape[-1] // 2
        x1, x2 = x[..., :h], x[..., h:]
        return x * cos + torch.cat((-x2, x1), dim=-1) * sin

    @torch.no_grad()
    def forward(self, tokens: torch.Tensor, start: int) -> torch.Tensor:
        """Run `tokens` (B, T) at positions start..start+T-1 through the model, filling the cache.

        Returns float32 logits of the last position (B, vocab), on the engine's device.
        """
        B, T = tokens.shape
        end = start + T
        if end > self.context:
            raise InputError(f"sequence of {end} tokens passes the context of {self.context}")
        self._alloc(B)
        tokens = tokens.to(self.device)
        if T == 1:
            return self._step(tokens[:, 0], start) if self.static else self._decode(tokens[:, 0], start)
        H, Hkv, hd = self.n_heads, self.n_kv, self.head_dim
        cos, sin = self.cos[start:end, None], self.sin[start:end, None]  # broadcast over heads
        x = F.embedding(tokens, self.embed)
        # A chunk after cached tokens is causal within itself and sees the whole cache.
        mask = torch.ones(T, end, dtype=torch.bool, device=self.device).tril(diagonal=start) if start else None
        for i, w in enumerate(self.layers):
            h = self._norm(x, w["attn_norm"])
            qkv = F.linear(h, w["wqkv"], w.get("bqkv")).view(B, T, H + 2 * Hkv, hd)
            # q and k share one rope call; the cache takes k and v in (B, heads, T, hd) layout.
            qk = self._rope(qkv[:, :, : H + Hkv], cos, sin).transpose(1, 2)
            k, v = qk[:, H:], qkv[:, :, H + Hkv:].transpose(1, 2)
            self.k_cache[i, :B, :, start:end] = k
            self.v_cache[i, :B, :, start:end] = v
            if start:
                k, v = (c[i, :B, :, :end].to(x.dtype) for c in (self.k_cache, self.v_cache))
            y = F.scaled_dot_product_attention(qk[:, :H], k, v, attn_mask=mask, is_causal=mask is None,
                                               enable_gqa=Hkv != H)
            x = x + F.linear(y.transpose(1, 2).reshape(B, T, H * hd), w["wo"], w.get("bo"))
            g, u = F.linear(self._norm(x, w["mlp_norm"]), w["w13"]).chunk(2, dim=-1)
            x = x + F.linear(F.silu(g) * u, w["w2"])
        x = self._norm(x[:, -1], self.norm)
        return F.linear(x, self.lm_head).float()

    def _decode(self, tokens: torch.Tensor, pos: int) -> torch.Tensor:
        """CPU: one new token per row (tokens (B,) at position `pos`), fp32 activations (class doc), with
        the compiled kernels when the engine has them, else PyTorch ops (same math, rows (B, D))."""
        kn = self.kernels
        linear = kn.linear if kn is not None else _linear
        attend = kn.attend if kn is not None else _attend
        B = tokens.shape[0]
        H, Hkv, hd = self.n_heads, self.n_kv, self.head_dim
        cos, sin = self.cos32[pos], self.sin32[pos]
        scale = 1.0 / hd ** 0.5
        x = F.embedding(tokens, self.embed).float()
        for i, w in enumerate(self.dec_layers):
            qkv = _add_bias(linear(self._norm(x, w["attn_norm"]), w["wqkv"]), w.get("bqkv"))
            qkv = qkv.view(B, H + 2 * Hkv, hd)
            qk = self._rope(qkv[:, : H + Hkv], cos, sin)
            kc, vc = self.k_cache[i, :B], self.v_cache[i, :B]
            kc[:, :, pos] = qk[:, H:]
            vc[:, :, pos] = qkv[:, H + Hkv:]
            y = attend(qk[:, :H].contiguous(), kc, vc, pos + 1, scale)
            x = x + _add_bias(linear(y.view(B, H * hd), w["wo"]), w.get("bo"))
            g, u = linear(self._norm(x, w["mlp_norm"]), w["w13"]).chunk(2, dim=-1)
            x = x + linear(F.silu(g) * u, w["w2"])
        return linear(self._norm(x, self.dec_norm), self.lm_head)

    def _step_static(self, tokens: torch.Tensor, pos: torch.Tensor, span: int) -> torch.Tensor:
        """One new token per row, graph-safe (gpt-fast style): `pos` is a (1,) tensor, rope rows come by
        index_select, k/v go into the cache by index_copy_, and attention reads the cache's first `span`
        positions under the mask `arange(span) <= pos`. No shape or Python value depends on `pos`, so one
        capture serves every position below `span`. Activations in the engine's dtype, as HF computes."""
        B = tokens.shape[0]
        H, Hkv, hd = self.n_heads, self.n_kv, self.head_dim
        cos, sin = self.cos.index_select(0, pos), self.sin.index_select(0, pos)  # (1, hd)
        mask = (self._positions[:span] <= pos).view(1, 1, 1, span)
        x = F.embedding(tokens, self.embed)
        for i, w in enumerate(self.layers):
            qkv = F.linear(self._norm(x, w["attn_norm"]), w["wqkv"], w.get("bqkv")).view(B, H + 2 * Hkv, hd)
            qk = self._rope(qkv[:, : H + Hkv], cos, sin)
            kc, vc = self.k_cache[i, :B], self.v_cache[i, :B]
            kc.index_copy_(2, pos, qk[:, H:, None])
            vc.index_copy_(2, pos, qkv[:, H + Hkv:, None])
            y = F.scaled_dot_product_attention(qk[:, :H, None], kc[:, :, :span], vc[:, :, :span], attn_mask=mask,
                                               enable_gqa=Hkv != H)
            x = x + F.linear(y.reshape(B, H * hd), w["wo"], w.get("bo"))
            g, u = F.linear(self._norm(x, w["mlp_norm"]), w["w13"]).chunk(2, dim=-1)
            x = x + F.linear(F.silu(g) * u, w["w2"])
        return F.linear(self._norm(x, self.norm), self.lm_head).float()

    def _span(self, pos: int) -> int:
        return min(self.context, (pos // self.SPAN + 1) * self.SPAN)

    def _step(self, tokens: torch.Tensor, pos: int) -> torch.Tensor:
        """The static step at `pos`: replayed from a CUDA graph where there is one, else run eagerly."""
        span = self._span(pos)
        if self.cuda_graphs:
            g = self._graphs.get((tokens.shape[0], span)) or self._capture(tokens, pos, span)
            if g is not None:
                graph, tok, p, out = g
                tok.copy_(tokens)
                p.fill_(pos)
                graph.replay()
                return out.clone()  # the next replay overwrites `out`
        self._pos.fill_(pos)
        return self._step_static(tokens, self._pos, span)

    def _capture(self, tokens: torch.Tensor, pos: int, span: int):
        """Capture the static step for this batch size and span (warm-up on a side stream, then capture);
        None, and eager steps from now on, if capture fails. The warm-up runs the real step at `pos`, which
        the replay repeats exactly (same inputs, same cache writes)."""
        tok, p = tokens.clone(), torch.full((1,), pos, dtype=torch.long, device=self.device)
        try:
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(2):
                    self._step_static(tok, p, span)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                out = self._step_static(tok, p, span)
        except Exception as e:  # an op that cannot be captured on this build: eager steps, same results
            self.cuda_graphs = False
            note = f"CUDA graph capture failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); " \
                   "decoding with eager steps"
            self.notes.append(note)
            print(f"note: {note}", file=sys.stderr, flush=True)
            return None
        self._graphs[(tokens.shape[0], span)] = entry = (graph, tok, p, out)
        return entry

    def describe(self) -> str:
        """How this engine decodes, in one line (benchmarks and the REPL print it)."""
        if self.device.type == "cpu" and not self.static:
            how = "compiled CPU decode kernels" if self.kernels is not None else \
                f"PyTorch decode ops ({self._no_kernels})"
        else:
            how = "static step" + (", CUDA graphs" if self.cuda_graphs else ", eager")
        return f"{self.plan.device} {self.plan.precision}, {how}"

    # ---- sampling ----
    def sample(self, logits: torch.Tensor, s: Sampling, generators: list[torch.Generator]) -> torch.Tensor:
        """Next token per row from float logits (B, vocab); ids >= K are never drawn."""
        logits = logits[:, : self.layout.codebook_size]  # masking the reserved ids = not offering them
        if s.temperature == 0:
            return logits.argmax(dim=-1)
        logits = logits / s.temperature
        if s.top_k and s.top_k < logits.shape[-1]:
            vals, idx = logits.topk(s.top_k, dim=-1)  # sorted, largest first
        else:
            vals, idx = logits.sort(dim=-1, descending=True)
        if s.top_p < 1.0:
            probs = vals.softmax(-1)
            # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
            drop = probs.cumsum(-1) - probs >= s.top_p
            vals = vals.masked_fill(drop, float("-inf"))
        probs = vals.softmax(-1)
        pick = torch.cat([torch.multinomial(probs[r], 1, generator=generators[r]) for r in range(len(probs))])
        return idx.gather(-1, pick[:, None])[:, 0]

    # ---- images ----
    def generate(self, prompt, n_new: int = 1, candidates: int = 1, sampling: Sampling | None = None,
                 seeds: list[int] | None = None, progress: ProgressFn | None = None,
                 use_cache: bool = True) -> Generation:
        """Complete the visual sequence `prompt` ((n, 256) codes or flat n*256 tokens) with `n_new` images.

        Returns `Generation.images` of shape (candidates, n_new, 256). `use_cache=False` recomputes the
        whole sequence for every token (slow; the reference that the cached path must equal).
        """
        s = sampling or Sampling()
        L = self.layout
        tpi = L.tokens_per_image
        prompt = torch.as_tensor(prompt).long().reshape(-1).cpu()
        if prompt.numel() == 0:
            raise InputError("the prompt has no images")
        L.n_images(prompt.numel())
        L.check_codes(prompt, "prompt")
        if n_new < 1 or candidates < 1:
            raise InputError("n_new and candidates must be >= 1")
        seeds = list(seeds) if seeds is not None else [s.seed + c for c in range(candidates)]
        if len(seeds) != candidates:
            raise InputError(f"{len(seeds)} seeds for {candidates} candidates")
        gens = [torch.Generator(device=self.device).manual_seed(int(sd)) for sd in seeds]
        B = candidates
        self._alloc(B)
        # Preallocated token rows; `n` of them are valid. Positions are indices into this buffer.
        seq = torch.empty(B, self.context, dtype=torch.long, device=self.device)
        dropped = 0
        notes: list[str] = []
        if prompt.numel() + tpi > self.context:
            prompt, dropped = L.keep_last_images(prompt, self.context_images - 1)
            notes.append(f"context full: kept the last {prompt.numel() // tpi} prompt images "
                         f"(dropped {dropped})")
        n = prompt.numel()
        seq[:, :n] = prompt
        shared = True  # all rows still equal (only the prompt): prefill one row and copy its cache
        cached = 0
        new = torch.empty(B, n_new, tpi, dtype=torch.long, device=self.device)
        t0 = time.perf_counter()
        prefill = 0.0
        done = 0
        for j in range(n_new):
            if n + tpi > self.context:
                kept, d = L.keep_last_images(seq[:, :n], self.context_images - 1)
                n = kept.shape[1]
                seq[:, :n] = kept.clone()
                dropped += d
                cached = 0
                notes.append(f"context full: kept the last {n // tpi} images "
                             f"(dropped {d}) before generating new image {j + 1}")
            for t in range(tpi):
                if not use_cache:
                    cached = 0
                if cached == 0 and shared and B > 1:
                    logits = self.forward(seq[:1, :n], 0)
                    self.k_cache[:, 1:B, :, :n] = self.k_cache[:, :1, :, :n]
                    self.v_cache[:, 1:B, :, :n] = self.v_cache[:, :1, :, :n]
                    logits = logits.expand(B, -1)
                else:
                    logits = self.forward(seq[:, cached:n], cached)
                cached = n
                tok = self.sample(logits, s, gens)
                seq[:, n] = tok
                n += 1
                new[:, j, t] = tok
                shared = False
                done += B
                if j == 0 and t == 0:
                    synchronize(self.device)
                    prefill = time.perf_counter() - t0
                if progress is not None:
                    progress(j, t + 1, done / max(time.perf_counter() - t0, 1e-9))
        new = new.cpu()  # waits for the device
        return Generation(images=new, dropped_images=dropped, seconds=time.perf_counter() - t0,
                          new_tokens=done, notes=notes, prefill_seconds=prefill)
