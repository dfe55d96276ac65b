"""Fast image generation for any HF `LlamaForCausalLM` checkpoint: complete a visual sequence image by image.

The model's weights are copied once into a small gpt-fast style decoder (fused QKV and gate/up matrices)
with a static, preallocated KV cache on the model's device (lvm/generate/cache.py). A forward pass is ~15
torch ops per layer and no HF machinery (no cache objects, logits processors or stopping criteria), which
is where HF `generate()` spends most of its time on small models. One layer loop (lvm/generate/layers.py)
runs every pass; what differs between them:
- the prompt (prefill, many tokens at once) runs in the plan's compute dtype: big matrix products;
- on a CPU, decoding passes run fp32 activations and read the weight matrices and the KV cache in the plan's
  storage dtype with the compiled kernels of `lvm.generate.kernels` (one-row products are bandwidth-bound:
  half the bytes is nearly half the time; where the CPU has bf16 dot products, a bf16 model's products and
  attention use them on inputs rounded to bf16). Where the CPU computes fp32 (bf16 emulated) big models keep
  bf16 storage all the same (`hardware.with_storage`). Without the kernels (no compiler, LVM_KERNELS=0) decoding
  uses PyTorch ops over an fp32 KV cache: PyTorch's one-query attention over a bf16 cache is several times
  slower than over an fp32 one;
- on CUDA (and MPS), decoding passes run PyTorch ops (SDPA) in the plan's dtype as a graph-safe pass with a
  static cache span, captured once per shape and span as a CUDA graph and replayed (gpt-fast).

Decoding is speculative by default where it pays (lvm/generate/speculative.py): each pass verifies tokens
drafted from the previous image and the model's own earlier guesses, and keeps the accepted ones; greedy
output equals plain greedy decoding and sampled output follows the model's distribution exactly.

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

import time
from dataclasses import replace

import torch

from lvm.generate import layers
from lvm.generate.cache import KVCache
from lvm.generate.cuda_graphs import capture_step
from lvm.generate.sampling import Generation, ProgressFn, Sampling, sample_next
from lvm.generate.speculative import DRAFT, DRAFT_COST, GRAPH_LENGTHS, MAX_DRAFT, Run, Schedule, decode_image
from lvm.generate.weights import decode_weight, layer_weights
from lvm.tokens import TOKENS_PER_IMAGE, TokenLayout
from lvm_base.errors import InputError
from lvm_base.hardware import with_storage


class Engine:
    """A LLaMA decoder with a static KV cache, built from the weights of an HF `LlamaForCausalLM`.

    `device` (None = the model's), `precision` (auto | fp32 | bf16 | fp16: the compute precision) and
    `storage` (auto | fp32 | bf16: what weights and cache are kept in, CPU kernels only) go through the
    policy; `engine.plan` records the outcome. `speculative`: None = on where it pays (DRAFT), False or 0 =
    plain decoding, an int = the most tokens a pass drafts. `static_step=True` runs the graph-safe pass on a CPU
    too (the code a CUDA graph captures, testable without a GPU). `consume=True` turns the model's
    q/k/v/gate/up weights into views of the fused matrices (or frees them where dtype or device differ), so
    a big model is never held twice.
    """

    SPAN = TOKENS_PER_IMAGE  # the static pass attends over the cache in blocks of one image: one graph each

    def __init__(self, model, layout: TokenLayout | None = None, precision: str = "auto", device=None,
                 max_batch: int = 8, max_context: int | None = None, consume: bool = False,
                 kernels: bool = True, cuda_graphs: bool = True, static_step: bool | None = None,
                 storage: str = "auto", speculative: bool | int | None = None):
        from lvm_base.hardware import resolve

        cfg = model.config
        if getattr(cfg, "hidden_act", "silu") != "silu":
            raise InputError(f"only SiLU LLaMA models are supported, got hidden_act={cfg.hidden_act}")
        here = next(model.parameters()).device
        self.plan = resolve(str(device or here), precision, "inference")
        self.device = torch.device(self.plan.device)
        on_cpu = self.device.type == "cpu"
        self.static = (not on_cpu) if static_step is None else bool(static_step)
        # The compiled kernels are CPU code for bf16 or fp32 weights; everything else decodes with PyTorch.
        self.kernels = None
        if kernels and on_cpu and not self.static and self.plan.dtype in (torch.bfloat16, torch.float32):
            from lvm.generate import kernels as _k

            self.kernels = _k.load()
        if self.kernels is not None:  # the kernels read bf16 storage with fp32 arithmetic
            self.plan = with_storage(self.plan, 4 * sum(p.numel() for p in model.parameters()), storage)
        self._no_kernels = "kernels=False" if not kernels else (
            f"no kernels for {self.plan.precision}" if self.kernels is None and self.plan.precision == "fp16"
            else None)
        if self.kernels is None and self._no_kernels is None and on_cpu and not self.static:
            from lvm.generate import kernels as _k

            self._no_kernels = _k.why_not() or "kernels unavailable"
        self.act_dtype = self.plan.dtype  # what prefill and the static pass compute in
        self.dtype = dt = self.plan.dtype if not self.plan.storage else \
            {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[self.plan.storage]
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
        self.capacity = self.context + MAX_DRAFT  # room for one pass of drafts past the context (cache.py)
        dev = self.device
        with torch.no_grad():
            m = model.model
            self.embed = m.embed_tokens.weight.detach().to(device=dev, dtype=dt).contiguous()
            self.layers = [layer_weights(l, dt, dev, consume) for l in m.layers]
            self.norm = m.norm.weight.detach().to(device=dev, dtype=dt).contiguous()
            self.lm_head = model.lm_head.weight.detach().to(device=dev, dtype=dt).contiguous()
            # The model's own rotary module gives cos/sin for every position, so any rope variant the
            # checkpoint's config asks for (scaling, theta) is reproduced exactly. The rows past the context
            # serve only padding, which no kept token sees: copies of the last row.
            pos = torch.arange(self.context, device=here).unsqueeze(0)
            probe = torch.zeros(1, 1, self.head_dim, dtype=torch.float32, device=here)
            cos, sin = (t[0] for t in m.rotary_emb(probe, pos))
            cos, sin = (torch.cat([t, t[-1:].expand(MAX_DRAFT, -1)]) for t in (cos, sin))  # (capacity, hd)
            self.cos, self.sin = cos.to(device=dev, dtype=self.act_dtype), sin.to(device=dev, dtype=self.act_dtype)
            self.cos32, self.sin32 = cos.to(device=dev, dtype=torch.float32), sin.to(dev, torch.float32)
        if not self.static:
            # CPU decoding (class doc): fp32 norm weights, the matrices as they are.
            self.dec_layers = [{k: decode_weight(v) for k, v in w.items()} for w in self.layers]
            self.dec_norm = self.norm.float()
        # PyTorch's CPU attention for one query over a bf16 cache is slow (module doc): fp32 cache without kernels.
        cache_dtype = dt if (self.static or self.kernels is not None) else torch.float32
        self.cache = KVCache(len(self.layers), self.n_kv, self.capacity, self.head_dim, cache_dtype, dev)
        self.cuda_graphs = bool(cuda_graphs) and dev.type == "cuda" and self.static
        # The most tokens a pass drafts (0 = plain decoding), and a drafted token's share of a pass's cost.
        self.draft = self._draft_of(speculative)
        # What a speculative pass costs (speculative.DRAFT_COST): fp32 weights make a CPU's one-token step dearer.
        fp32 = f"{dev.type}-fp32"
        self.draft_cost = DRAFT_COST.get(fp32 if self.dtype == torch.float32 and fp32 in DRAFT_COST else dev.type,
                                         (0.0, 1.0))
        self.notes: list[str] = list(self.plan.notes)
        self._graphs: dict = {}
        self._pool = None
        self.positions = torch.arange(self.capacity, device=dev)
        # Accelerator memory is precious (a 7B cache row is 2 GB): one row now, more when a batch asks.
        self._alloc(max_batch if on_cpu else 1)

    @classmethod
    def from_pretrained(cls, path, device: str | None = "auto", precision: str = "auto", **kw) -> "Engine":
        """Load an HF Llama directory (ours or the released LVM layout) straight onto the device in the
        plan's precision (a half-precision 7B never has an fp32 copy in RAM) and into the engine."""
        from lvm.checkpoints import load_causal_lm

        model, plan = load_causal_lm(path, device, precision, fp32_on_cpu=False)
        # The same request again (same policy, same answer), so that an auto precision may pick its storage.
        engine = cls(model, precision=precision, device=plan.device, consume=True, **kw)
        engine.plan = replace(plan, storage=engine.plan.storage)  # what was asked for, and what it resolved to
        return engine

    # ---- cache ----
    @property
    def k_cache(self) -> torch.Tensor:
        return self.cache.k

    @property
    def v_cache(self) -> torch.Tensor:
        return self.cache.v

    @property
    def max_batch(self) -> int:
        return self.cache.rows

    def _alloc(self, batch: int):
        if self.cache.ensure(batch):
            self._graphs = {}  # captured graphs point into the old cache

    # ---- forward passes ----
    @torch.no_grad()
    def forward(self, tokens: torch.Tensor, start, verify: bool = False) -> torch.Tensor:
        """Run `tokens` (B, T) through the model, filling the cache: row b's tokens at positions
        start[b] .. start[b]+T-1 (`start` an int: the same for every row).

        Returns float32 logits on the engine's device: of the last position (B, vocab), or with `verify` of
        every position (B, T, vocab), scored as T one-token decoding steps would score them.
        """
        B, T = tokens.shape
        starts = [start] * B if isinstance(start, int) else [int(s) for s in start]
        limit = self.capacity if verify else self.context  # drafts past the context are padding (cache.py)
        if max(starts) + T > limit:
            raise InputError(f"sequence of {max(starts) + T} tokens passes the context of {self.context}")
        self._alloc(B)
        tokens = tokens.to(self.device)
        if T > 1 and not verify:
            if min(starts) != max(starts):
                raise InputError("a prefill's rows share their positions")
            return layers.run(self, tokens, layers.prefill(self, B, starts[0], T))
        if self.static:
            logits = self._step(tokens, starts)
        else:
            logits = layers.run(self, tokens, layers.decode(self, B, starts, T))
        return logits if verify else logits[:, -1]

    def _span(self, pos: int) -> int:
        return min(self.capacity, (pos // self.SPAN + 1) * self.SPAN)

    def _step(self, tokens: torch.Tensor, starts: list[int]) -> torch.Tensor:
        """The static pass (B, Q) -> (B, Q, vocab): replayed from a CUDA graph where there is one, else eager."""
        B, Q = tokens.shape
        span = self._span(max(starts) + Q - 1)
        if min(starts) == max(starts):  # plain decoding: positions from the device, no host copy, no sync
            pos = self.positions[starts[0]:starts[0] + Q].expand(B, Q)
        else:
            pos = torch.tensor(starts, device=self.device)[:, None] + self.positions[:Q]
        if self.cuda_graphs:
            g = self._graphs.get((B, Q, span)) or capture_step(self, tokens, pos, span)
            if g is not None:
                graph, tok, p, out = g
                tok.copy_(tokens)
                p.copy_(pos)
                graph.replay()
                return out.clone()  # the next replay overwrites `out`
        return self._step_static(tokens, pos, span)

    def _step_static(self, tokens: torch.Tensor, pos: torch.Tensor, span: int) -> torch.Tensor:
        return layers.run(self, tokens, layers.static(self, pos, span))

    def describe(self) -> str:
        """How this engine decodes, in one line (benchmarks and the REPL print it)."""
        if self.device.type == "cpu" and not self.static:
            how = "compiled CPU decode kernels" if self.kernels is not None else \
                f"PyTorch decode ops ({self._no_kernels})"
        else:
            how = "static step" + (", CUDA graphs" if self.cuda_graphs else ", eager")
        store = f" ({self.plan.storage} storage)" if self.plan.storage else ""
        spec = f", speculative (up to {self.draft} drafts a pass)" if self.draft else ", plain decoding"
        return f"{self.plan.device} {self.plan.precision}{store}, {how}{spec}"

    # ---- sampling ----
    def sample(self, logits: torch.Tensor, s: Sampling, generators: list[torch.Generator]) -> torch.Tensor:
        """Next token per row from float logits (B, vocab); ids >= K are never drawn."""
        return sample_next(logits, s, generators, self.layout.codebook_size)

    # ---- images ----
    def generate(self, prompt, n_new: int = 1, candidates: int = 1, sampling: Sampling | None = None,
                 seeds: list[int] | None = None, progress: ProgressFn | None = None,
                 use_cache: bool = True, speculative: bool | int | None = None) -> Generation:
        """Complete the visual sequence `prompt` ((n, 256) codes or flat n*256 tokens) with `n_new` images.

        Returns `Generation.images` of shape (candidates, n_new, 256). `use_cache=False` recomputes the
        whole sequence for every token (slow; the reference that the cached path must equal).
        `speculative` overrides the engine's setting for this call (None = keep it).
        """
        s = sampling or Sampling()
        tpi = self.layout.tokens_per_image
        prompt = self._check_prompt(prompt, n_new, candidates)
        draft = (self.draft if speculative is None else self._draft_of(speculative)) if use_cache else 0
        B = candidates
        self._alloc(B)  # the cache's memory check comes before any per-candidate work
        gens = self._generators(s, candidates, seeds)
        # Preallocated token rows; `n` of them are valid. Positions are indices into this buffer.
        seq = torch.empty(B, self.capacity, dtype=torch.long, device=self.device)
        notes: list[str] = []
        dropped = 0
        if prompt.numel() + tpi > self.context:
            prompt, dropped = self.layout.keep_last_images(prompt, self.context_images - 1)
            notes.append(f"context full: kept the last {prompt.numel() // tpi} prompt images "
                         f"(dropped {dropped})")
        n = prompt.numel()
        seq[:, :n] = prompt
        new = torch.empty(B, n_new, tpi, dtype=torch.long, device=self.device)
        lengths = GRAPH_LENGTHS if self.cuda_graphs else None  # each pass shape of a graph is captured once
        run = Run(t0=time.perf_counter(), shared=True,
                  schedules=[Schedule(draft, self.draft_cost, lengths) for _ in range(B)])
        for j in range(n_new):
            if n + tpi > self.context:
                n, d = self._crop(seq, n)
                run.cached, dropped = 0, dropped + d
                notes.append(f"context full: kept the last {n // tpi} images "
                             f"(dropped {d}) before generating new image {j + 1}")
            n = decode_image(self, seq, n, new[:, j], s, gens, run, use_cache,
                             (lambda t, tps, j=j: progress(j, t, tps)) if progress else None, first=j == 0)
        new = new.cpu()  # waits for the device
        return Generation(images=new, dropped_images=dropped, seconds=time.perf_counter() - run.t0,
                          new_tokens=run.done, notes=notes, prefill_seconds=run.prefill, passes=run.passes,
                          row_passes=run.row_passes, draft=draft)

    def _draft_of(self, speculative: bool | int | None) -> int:
        """Tokens a pass drafts for a `speculative` setting: None or True = this device's default, False = 0."""
        draft = DRAFT.get(self.device.type, 0) if speculative is None or speculative is True else int(speculative)
        if not 0 <= draft <= MAX_DRAFT:
            raise InputError(f"speculative decoding drafts 0..{MAX_DRAFT} tokens per pass, got {draft}")
        return draft

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
