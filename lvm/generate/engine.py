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
  the KV cache (bf16 or fp32, as the plan says) with fp32 arithmetic, attention in one pass. Without them
  (no compiler, LVM_KERNELS=0) decoding uses PyTorch ops over an fp32 KV cache, because PyTorch's
  one-query attention over a bf16 cache is several times slower than over an fp32 one;
- on CUDA (and MPS), decoding runs PyTorch ops (SDPA) in the plan's dtype as a graph-safe step with a
  static cache span, captured once per batch size and span as a CUDA graph and replayed (gpt-fast).

Token contract (docs/released-lvm.md section 1): a sequence is raw image tokens, 256 per image, image i at
positions 256*i .. 256*i+255 from the start of the sequence, no BOS. When the prompt plus the next image
would pass the context, the sequence is cut to its last `context_images - 1` whole images (positions restart
at 0, as the released inference does) and the caller is told how many images were dropped. Ids >= K are
never sampled: their logits are masked before temperature / top-k / top-p.

Each candidate has its own torch.Generator (seed + candidate index by default): its image does not depend on its batch.

    engine = Engine.from_pretrained("runs/lvm", device="auto", precision="auto")   # or Engine(hf_model)
    out = engine.generate(prompt_codes, n_new=1, candidates=4, sampling=Sampling(temperature=1.0))
    out.images  # long (4, 1, 256)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lvm.generate import weights as W
from lvm.generate.cuda_graphs import capture_step
from lvm.generate.sampling import Generation, ProgressFn, Sampling, sample_next
from lvm.generate.weights import decode_weight, layer_weights
from lvm.tokens import TOKENS_PER_IMAGE, TokenLayout
from tokenizer.common.errors import InputError
from tokenizer.common.hardware import free_memory, precision_name, synchronize


class Engine:
    """A LLaMA decoder with a static KV cache, built from the weights of an HF `LlamaForCausalLM`.

    `device` (None = the model's) and `precision` (auto | fp32 | bf16 | fp16) go through the policy;
    `engine.plan` records the outcome. How one token is decoded on each device: the module doc.
    `static_step=True` runs the graph-safe step (`_step_static`) on a CPU too (the code a CUDA graph
    captures, testable without a GPU). `consume=True` turns the model's q/k/v/gate/up weights into views of
    the fused matrices (or frees them where dtype or device differ), so a big model is never held twice.
    """

    SPAN = TOKENS_PER_IMAGE  # the static step attends over the cache in blocks of one image: one graph each

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
            self.layers = [layer_weights(l, dt, dev, consume) for l in m.layers]
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
            self.dec_layers = [{k: decode_weight(v) for k, v in w.items()} for w in self.layers]
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
        need = 2 * math.prod(shape) * torch.empty(0, dtype=self.cache_dtype).element_size()
        free = free_memory(self.device)  # checked first: past it the allocator fails with a traceback
        if free is not None and need > free:
            raise InputError(f"the KV cache for {batch} candidate(s) needs {need / 2 ** 30:.1f} GiB, "
                             f"{free / 2 ** 30:.1f} GiB are free for it on {self.device}; use fewer candidates")
        self.k_cache = torch.zeros(shape, dtype=self.cache_dtype, device=self.device)
        self.v_cache = torch.zeros(shape, dtype=self.cache_dtype, device=self.device)
        self.max_batch = batch

    # ---- the decoder ----
    def _norm(self, x, w):
        if x.dtype == torch.float32 or (x.dtype == torch.bfloat16 and x.device.type == "cpu"):
            # Written out: F.rms_norm's bf16 path costs several times these four ops on one CPU row.
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
        linear = kn.linear if kn is not None else W.linear
        attend = kn.attend if kn is not None else W.attend
        B = tokens.shape[0]
        H, Hkv, hd = self.n_heads, self.n_kv, self.head_dim
        cos, sin = self.cos32[pos], self.sin32[pos]
        scale = 1.0 / hd ** 0.5
        x = F.embedding(tokens, self.embed).float()
        for i, w in enumerate(self.dec_layers):
            qkv = W.add_bias(linear(self._norm(x, w["attn_norm"]), w["wqkv"]), w.get("bqkv"))
            qkv = qkv.view(B, H + 2 * Hkv, hd)
            qk = self._rope(qkv[:, : H + Hkv], cos, sin)
            kc, vc = self.k_cache[i, :B], self.v_cache[i, :B]
            kc[:, :, pos] = qk[:, H:]
            vc[:, :, pos] = qkv[:, H + Hkv:]
            y = attend(qk[:, :H].contiguous(), kc, vc, pos + 1, scale)
            x = x + W.add_bias(linear(y.view(B, H * hd), w["wo"]), w.get("bo"))
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
            g = self._graphs.get((tokens.shape[0], span)) or capture_step(self, tokens, pos, span)
            if g is not None:
                graph, tok, p, out = g
                tok.copy_(tokens)
                p.fill_(pos)
                graph.replay()
                return out.clone()  # the next replay overwrites `out`
        self._pos.fill_(pos)
        return self._step_static(tokens, self._pos, span)

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
        return sample_next(logits, s, generators, self.layout.codebook_size)

    # ---- images ----
    def generate(self, prompt, n_new: int = 1, candidates: int = 1, sampling: Sampling | None = None,
                 seeds: list[int] | None = None, progress: ProgressFn | None = None,
                 use_cache: bool = True) -> Generation:
        """Complete the visual sequence `prompt` ((n, 256) codes or flat n*256 tokens) with `n_new` images.

        Returns `Generation.images` of shape (candidates, n_new, 256). `use_cache=False` recomputes the
        whole sequence for every token (slow; the reference that the cached path must equal).
        """
        s = sampling or Sampling()
        tpi = self.layout.tokens_per_image
        prompt = self._check_prompt(prompt, n_new, candidates)
        B = candidates
        self._alloc(B)  # the cache's memory check comes before any per-candidate work
        gens = self._generators(s, candidates, seeds)
        # Preallocated token rows; `n` of them are valid. Positions are indices into this buffer.
        seq = torch.empty(B, self.context, dtype=torch.long, device=self.device)
        notes: list[str] = []
        dropped = 0
        if prompt.numel() + tpi > self.context:
            prompt, dropped = self.layout.keep_last_images(prompt, self.context_images - 1)
            notes.append(f"context full: kept the last {prompt.numel() // tpi} prompt images "
                         f"(dropped {dropped})")
        n = prompt.numel()
        seq[:, :n] = prompt
        new = torch.empty(B, n_new, tpi, dtype=torch.long, device=self.device)
        run = _Run(t0=time.perf_counter(), shared=True)
        for j in range(n_new):
            if n + tpi > self.context:
                n, d = self._crop(seq, n)
                run.cached, dropped = 0, dropped + d
                notes.append(f"context full: kept the last {n // tpi} images "
                             f"(dropped {d}) before generating new image {j + 1}")
            n = self._decode_image(seq, n, new[:, j], s, gens, run, use_cache,
                                   (lambda t, tps, j=j: progress(j, t, tps)) if progress else None, first=j == 0)
        new = new.cpu()  # waits for the device
        return Generation(images=new, dropped_images=dropped, seconds=time.perf_counter() - run.t0,
                          new_tokens=run.done, notes=notes, prefill_seconds=run.prefill)

    def _check_prompt(self, prompt, n_new: int, candidates: int) -> torch.Tensor:
        """The prompt as flat CPU tokens, after the token contract's checks (whole images, image codes)."""
        prompt = torch.as_tensor(prompt).long().reshape(-1).cpu()
        if prompt.numel() == 0:
            raise InputError("the prompt has no images")
        self.layout.n_images(prompt.numel())
        self.layout.check_codes(prompt, "prompt")
        if n_new < 1 or candidates < 1:
            raise InputError("n_new and candidates must be >= 1")
        return prompt

    def _generators(self, s: Sampling, candidates: int, seeds) -> list[torch.Generator]:
        """One generator per candidate (seed + index by default), so a candidate's image does not depend on
        its batch."""
        seeds = list(seeds) if seeds is not None else [s.seed + c for c in range(candidates)]
        if len(seeds) != candidates:
            raise InputError(f"{len(seeds)} seeds for {candidates} candidates")
        return [torch.Generator(device=self.device).manual_seed(int(sd)) for sd in seeds]

    def _crop(self, seq: torch.Tensor, n: int) -> tuple[int, int]:
        """Cut the rows to their last `context_images - 1` whole images, in place: (new length, images dropped)."""
        kept, d = self.layout.keep_last_images(seq[:, :n], self.context_images - 1)
        seq[:, :kept.shape[1]] = kept.clone()
        return kept.shape[1], d

    def _decode_image(self, seq, n: int, out, s: Sampling, gens, run: "_Run", use_cache: bool, progress,
                      first: bool) -> int:
        """Sample one image's tokens after the first `n` of every row into `out` (B, 256); the new length."""
        B = seq.shape[0]
        for t in range(self.layout.tokens_per_image):
            if not use_cache:
                run.cached = 0
            if run.cached == 0 and run.shared and B > 1:
                # All rows are still the prompt: prefill one row and copy its cache.
                logits = self.forward(seq[:1, :n], 0)
                self.k_cache[:, 1:B, :, :n] = self.k_cache[:, :1, :, :n]
                self.v_cache[:, 1:B, :, :n] = self.v_cache[:, :1, :, :n]
                logits = logits.expand(B, -1)
            else:
                logits = self.forward(seq[:, run.cached:n], run.cached)
            run.cached = n
            tok = self.sample(logits, s, gens)
            seq[:, n] = tok
            out[:, t] = tok
            n += 1
            run.shared = False
            run.done += B
            if first and t == 0:
                synchronize(self.device)
                run.prefill = time.perf_counter() - run.t0
            if progress is not None:
                progress(t + 1, run.done / max(time.perf_counter() - run.t0, 1e-9))
        return n


@dataclass
class _Run:
    """The state one `generate` call carries from image to image."""

    t0: float
    shared: bool  # every row still holds only the prompt
    cached: int = 0  # tokens of each row already in the KV cache
    done: int = 0  # tokens sampled, over all rows
    prefill: float = 0.0
