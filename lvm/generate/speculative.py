"""Decoding one image, plainly or speculatively, in one loop (`decode_image`): drafts, verification, acceptance.

A plain pass feeds every candidate row its last token and samples the next one. A speculative pass feeds
each row its last token and some guessed tokens after it, scores them all in one forward pass (scored as
one-token steps would score them, Engine.forward(verify=True)), and keeps the accepted prefix plus one token
of the model's own. How many tokens a row guesses is its `Schedule`'s choice: as many as pay for their cost
at the acceptance rates the row has seen for each kind of guess, none (plain passes) where guessing does not
pay. A guess for a position is the model's guess from the previous pass where it made one (a
Jacobi iterate: that pass saw a slightly different prefix; Teng et al., Speculative Jacobi Decoding) and
otherwise the token in the same grid cell of the previous image, which a video's next frame or an orbit's
next view largely repeats, and which costs nothing.

Acceptance is speculative sampling (Leviathan et al. 2023; Chen et al. 2023). With p the model's
distribution at a position after temperature / top-k / top-p (exactly what plain decoding draws from) and
q the distribution the guess x was drawn from (the previous pass's p for a sampled Jacobi guess; a point
mass for a previous-image token and for every greedy guess), x is kept with probability min(1, p(x)/q(x));
the first position that rejects its guess draws from norm(max(0, p - q)) instead, and when every guess is
kept the last position draws one more token from p. Every token so made follows p given the tokens before
it, whatever the guesses were, so the sequence follows the model's distribution exactly. Greedy decoding
is the case where p is the point mass on the argmax: a guess is kept when it is the argmax, and the first
that is not is replaced by it, so greedy speculative output is plain greedy output wherever a verification
pass scores a token as a one-token step does (bit for bit on the CPU kernels, which are batch-invariant).

Rows advance independently: each keeps its own accepted prefix and its cache is rolled back past the rest
(lvm/generate/cache.py); a row that has finished its image is padded until the others finish theirs. Each
row's guesses, schedule and random numbers (from its own generator) depend on that row alone, so a
candidate's image does not depend on its batch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from lvm.generate.sampling import next_probs, sample_next
from lvm_base.hardware import synchronize

MAX_DRAFT = 32  # tokens a pass may draft per row: the cache's room past the context (cache.py)
# Most tokens drafted per pass by default, per device type (elsewhere, MPS, decoding stays plain), and what a
# speculative pass costs beside a one-token step (its pass and its acceptance): (a fixed part, a part per
# drafted token). A GPU's pass is bound by reading the weights or by launch overhead, so more tokens are nearly
# free. A CPU's pass of a small model is partly bound by arithmetic (attention over the cache and the products
# grow with the tokens), the more so where weights are read as bf16 (a cheap step): timings of lvm-small's
# passes of 1 + d tokens (docs/results.md) put a bf16 one near 1.45 + 0.155 d steps, an fp32 one near
# 1.45 + 0.125 d, the fixed part mostly the pass's acceptance in Python. Fit on lvm-small: a bigger model's
# extra tokens cost more (100m's under AVX2 fp32 arithmetic nearly twice these).
DRAFT = {"cuda": 15, "cpu": 15}
DRAFT_COST = {"cuda": (0.0, 0.03), "cpu": (0.45, 0.155), "cpu-fp32": (0.45, 0.125)}
PROBE_EVERY = 32  # passes, once speculation stops paying, until a short speculative one looks again


# What a guess is, for the acceptance rates a schedule keeps apart: the model's own guess from the previous
# pass (Jacobi), or the previous image's token in the same cell where that cell held the same token in the
# image before (a still part of a video or an orbit: nearly always right), or where it changed (often wrong).
JACOBI, SAME, CHANGED = 0, 1, 2
# Draft lengths a pass may use where each pass shape is a captured CUDA graph (besides the schedule's most).
GRAPH_LENGTHS = (1, 3, 7, 15, 31)


def best_draft(rates: list[float], cost: tuple[float, float], lengths=None) -> int:
    """The draft length (0 = a plain pass; among `lengths` and len(rates), or any) with the most expected
    tokens per unit of pass cost (a speculative pass drafting d tokens costs 1 + cost[0] + cost[1] * d
    one-token steps), when guess j (of len(rates) possible) is accepted with probability rates[j] given the
    ones before it were."""
    best, pick, tokens, p = 1.0, 0, 1.0, 1.0
    for d, r in enumerate(rates, 1):
        p *= r
        tokens += p
        value = tokens / (1 + cost[0] + cost[1] * d)
        if (lengths is None or d in lengths or d == len(rates)) and value > best:
            best, pick = value, d
    return pick


@dataclass
class Schedule:
    """How many tokens each pass drafts: `best_draft` for the kinds of guesses on offer and each kind's
    acceptance rate so far (a running mean over the passes' accept/reject outcomes); while plain passes pay
    more, plain passes with an occasional speculative one to look again. Decided from the tokens alone,
    never from timings, so a seeded sampled generation is reproducible."""

    most: int  # 0 = always plain
    cost: tuple[float, float]  # best_draft's
    lengths: tuple | None = None  # best_draft's
    rates: list = field(default_factory=lambda: [0.9, 0.9, 0.9])  # per kind; optimistic: the first pass drafts
    seen: list = field(default_factory=lambda: [0, 0, 0])  # guesses judged, per kind
    plain_left: int = 0

    def next(self, kinds_of) -> int:
        """Tokens to draft, given `kinds_of()`: the kinds of the guesses for the next slots (as many as may
        be drafted; asked for only when a pass may draft)."""
        if self.most == 0 or self.plain_left > 1:
            self.plain_left = max(0, self.plain_left - 1)
            return 0
        kinds = kinds_of()[:self.most]
        if not kinds:
            return 0
        if self.plain_left > 0:
            self.plain_left -= 1
            return 0 if self.plain_left else min(len(kinds), 3)  # a cheap speculative pass to look again
        d = best_draft([self.rates[k] for k in kinds], self.cost, self.lengths)
        if d == 0:
            self.plain_left = PROBE_EVERY
        return d

    def saw(self, kinds: list[int], accepted: int, judged: int) -> None:
        """The guesses of `kinds` were judged up to slot `judged` and the first `accepted` of them kept."""
        for k in set(kinds[:judged]):
            trials = sum(1 for x in kinds[:judged] if x == k)
            kept = sum(1 for x in kinds[:accepted] if x == k)
            # The mean of the kind's judged guesses, the start value counting as 8 of them, and later of
            # about the last 64: quick to learn, then steady through a stretch of changed cells.
            w = min(1.0, trials / min(64, 8 + self.seen[k]))
            self.rates[k] = (1 - w) * self.rates[k] + w * kept / trials
            self.seen[k] += trials


@dataclass
class Run:
    """The state one `Engine.generate` call carries from image to image."""

    t0: float
    shared: bool  # every row still holds only the prompt
    schedules: list[Schedule]  # one per row: a row's drafts depend on its own acceptance alone
    cached: int = 0  # tokens of each row in the KV cache: after any pass, all but the row's last one
    done: int = 0  # tokens sampled, over all rows
    prefill: float = 0.0
    passes: int = 0  # forward passes that made tokens
    row_passes: int = 0  # the same, once per row still decoding in them


@dataclass
class Guesses:
    """The model's guesses for the slots of each row's next pass, from the pass that just ran (Jacobi)."""

    tokens: torch.Tensor  # (B, draft)
    probs: torch.Tensor | None  # (B, draft, K): what each guess was drawn from (sampling); None when greedy
    count: list[int]  # slots 0 .. count-1 of a row hold a guess


def decode_image(e, seq, n: int, out, s, gens, run: Run, use_cache: bool, progress, first: bool) -> int:
    """Sample one image's tokens after the first `n` of every row of `seq` into `out` (B, tokens per image),
    each row drafting as its schedule in `run.schedules` says; returns the new length n + tokens per image."""
    B, tpi = seq.shape[0], e.layout.tokens_per_image
    lens, done = [n] * B, [0] * B
    guesses = None
    # Whether each cell of the previous image holds the token it held in the image before (SAME or CHANGED).
    same = (seq[:, n - tpi:n] == seq[:, n - 2 * tpi:n - tpi]).tolist() if n >= 2 * tpi else [[True] * tpi] * B
    while min(done) < tpi:
        catch_up = not use_cache or run.cached < lens[0] - 1  # (rows are in lockstep then)
        kinds = [[] for _ in range(B)]  # of the guesses each row drafts, filled where a row may draft

        def kinds_of(b):
            kinds[b] = guess_kinds(same[b], done[b], guesses.count[b] if guesses else 0, run.schedules[b].most)
            return kinds[b]

        drafts = [0 if catch_up or done[b] == tpi else run.schedules[b].next(lambda b=b: kinds_of(b))
                  for b in range(B)]
        if catch_up or (max(drafts) == 0 and min(lens) == max(lens)):
            # Rows in lockstep: the prompt's (or a crop's) prefill, or a plain step; one token per row.
            tok = e.sample(_lockstep_logits(e, seq, lens[0], run, use_cache), s, gens)
            seq[:, lens[0]] = tok
            out[:, done[0]] = tok
            lens, done = [x + 1 for x in lens], [x + 1 for x in done]
            guesses = None  # a plain pass guesses nothing (as a row drafting 0 tokens in a speculative one)
            run.passes, run.row_passes, run.done = run.passes + 1, run.row_passes + B, run.done + B
            if first and done[0] == 1:
                synchronize(e.device)
                run.prefill = time.perf_counter() - run.t0
        else:  # rows drafting 0 tokens here gain one token each, as a plain step makes it
            new, guesses, judged = speculate(e, seq, lens, done, n, s, gens, drafts, guesses)
            for b, toks in enumerate(new):
                if len(toks):
                    run.schedules[b].saw(kinds[b], *judged[b])
                k = len(toks)
                seq[b, lens[b]:lens[b] + k] = toks
                out[b, done[b]:done[b] + k] = toks
                lens[b], done[b] = lens[b] + k, done[b] + k
            run.cached = lens[0] - 1  # every row: all but its last token (the rest rolled back)
            run.passes += 1
            run.row_passes += sum(1 for toks in new if len(toks))
            run.done += sum(len(toks) for toks in new)
        if progress is not None:
            progress(min(done), run.done / max(time.perf_counter() - run.t0, 1e-9))
    return n + tpi


def guess_kinds(same: list[bool], done: int, jacobi: int, most: int) -> list[int]:
    """The kinds of a row's guesses for its next slots (those that land inside the image, at most `most`),
    when it has made `done` tokens of the image and holds `jacobi` guesses of the last pass."""
    tpi = len(same)
    return [JACOBI if j < jacobi else SAME if same[done + j] else CHANGED for j in range(min(most, tpi - done - 1))]


def _lockstep_logits(e, seq, n: int, run: Run, use_cache: bool) -> torch.Tensor:
    """Logits (B, vocab) of position n of every row, feeding what the cache lacks of seq[:, :n]."""
    B = seq.shape[0]
    if not use_cache:
        run.cached = 0
    if run.cached == 0 and run.shared and B > 1:
        # All rows are still the prompt: prefill one row and copy its cache.
        logits = e.forward(seq[:1, :n], 0)
        e.cache.share_row0(B, n)
        logits = logits.expand(B, -1)
    else:
        logits = e.forward(seq[:, run.cached:n], run.cached)
    run.cached, run.shared = n, False
    return logits


def propose(seq, lens: list[int], img0: int, tpi: int, draft: int, guesses: Guesses | None):
    """The tokens a pass feeds (B, 1 + draft): each row's last token, then its guesses (Jacobi where the last
    pass made one, else the previous image's token in the same grid cell); and which slots are Jacobi guesses."""
    dev = seq.device
    at = torch.tensor(lens, device=dev)[:, None]
    slots = at + torch.arange(draft, device=dev)  # the positions the guesses are for
    # Slots past the image's end are padding: any token (here a clamped previous-image one) does.
    x = seq.gather(1, (slots - tpi).clamp(max=img0 - 1))
    jacobi = None
    if guesses is not None:  # made for a pass of up to `draft` slots, maybe another length than this one
        jacobi = torch.arange(draft, device=dev)[None] < torch.tensor(guesses.count, device=dev)[:, None]
        x = torch.where(jacobi, _fit(guesses.tokens, draft), x)
    return torch.cat([seq.gather(1, at - 1), x], dim=1), jacobi


def _fit(t: torch.Tensor, draft: int) -> torch.Tensor:
    """`t` (B, slots, ...) cut or zero-padded to `draft` slots."""
    if t.shape[1] >= draft:
        return t[:, :draft]
    return torch.cat([t, t.new_zeros(t.shape[0], draft - t.shape[1], *t.shape[2:])], dim=1)


def speculate(e, seq, lens: list[int], done: list[int], img0: int, s, gens, drafts: list[int],
              guesses: Guesses | None):
    """One speculative pass over every row, row b judging drafts[b] guesses (the pass has max(drafts) slots;
    a row's slots past its own are padding, which nothing it keeps or guesses next depends on): the tokens
    each row gains (empty for a finished row), the guesses for the next pass, and each row's (guesses kept,
    guesses judged)."""
    tpi, K = e.layout.tokens_per_image, e.layout.codebook_size
    tokens, jacobi = propose(seq, lens, img0, tpi, max(drafts), guesses)
    logits = e.forward(tokens, [x - 1 for x in lens], verify=True)  # (B, 1 + max(drafts), vocab)
    room = [tpi - d for d in done]  # tokens each row still needs
    valid = [max(0, min(d, r - 1)) for d, r in zip(drafts, room)]  # its guesses that land inside the image
    if s.temperature == 0:
        return accept_greedy(logits, tokens[:, 1:], room, valid, drafts, K)
    return accept_sampled(logits, tokens[:, 1:], jacobi, guesses, room, valid, drafts, s, gens, K)


def accept_greedy(logits, x, room: list[int], valid: list[int], drafts: list[int], K: int):
    B, draft = x.shape
    target = logits[..., :K].argmax(-1)  # (B, 1 + draft): the model's token after each fed one
    hit = (x == target[:, :-1]) & (torch.arange(draft, device=x.device)[None] <
                                   torch.tensor(valid, device=x.device)[:, None])
    kept = hit.long().cumprod(1).sum(1)
    idx = (kept[:, None] + 1 + torch.arange(draft, device=x.device)).clamp(max=draft)
    a = kept.tolist()
    # Kept guesses equal the argmax, and the token after them is the argmax there (the correction, or one more).
    new = [target[b, :a[b] + 1] if room[b] else target[b, :0] for b in range(B)]
    # The next pass's guesses: the argmax at this pass's later positions within the row's own slots.
    later = Guesses(target.gather(1, idx), None, [drafts[b] - a[b] if room[b] else 0 for b in range(B)])
    return new, later, _judged(a, valid)


def _judged(a: list[int], valid: list[int]) -> list[tuple[int, int]]:
    """Each row's (guesses kept, guesses judged): its kept guesses and the one it rejected, if any."""
    return [(a[b], a[b] + (a[b] < valid[b])) for b in range(len(a))]


def keeps(u: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """Which guesses are kept: each with probability min(1, p(x) / q(x)), from uniforms `u`."""
    return u < ratio


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """What a rejected position draws from: norm(max(0, p - q)) (unnormalised; multinomial normalises)."""
    r = (p - q).clamp(min=0)
    return r if r.sum() > 0 else p  # p == q up to rounding: rejection had probability ~0


def accept_sampled(logits, x, jacobi, guesses: Guesses | None, room: list[int], valid: list[int], drafts: list[int],
                   s, gens, K: int):
    B, draft = x.shape
    dev = x.device
    p = next_probs(logits, s, K)  # (B, 1 + draft, K): what plain decoding would draw from at each position
    ratio = p[:, :-1].gather(2, x[..., None])[..., 0]  # p(x) / q(x), q(x) = 1 for a point mass
    q = None
    if jacobi is not None:
        q = _fit(guesses.probs, draft)
        ratio = torch.where(jacobi, ratio / q.gather(2, x[..., None])[..., 0].clamp(min=1e-30), ratio)
    new, count, kept = [], [0] * B, [0] * B
    g_tok = torch.zeros(B, draft, dtype=torch.long, device=dev)
    g_prob = torch.zeros(B, draft, K, device=dev)
    for b in range(B):
        if not room[b]:
            new.append(x[b, :0])
            continue
        c, g = valid[b], gens[b]
        a = 0
        if c:
            u = torch.rand(c, generator=g, device=dev)
            a = int(keeps(u, ratio[b, :c]).long().cumprod(0).sum())
        if a < c:  # the first rejected guess: draw from the residual instead
            jac = jacobi is not None and bool(jacobi[b, a])
            qa = q[b, a] if jac else torch.zeros(K, device=dev).index_fill_(0, x[b, a:a + 1], 1.0)
            tok = torch.multinomial(residual(p[b, a], qa), 1, generator=g)
        else:  # every guess kept: one more token from p, as a plain step draws it
            tok = sample_next(logits[b, c][None], s, [g], K)
        new.append(torch.cat([x[b, :a], tok]))
        kept[b] = a
        # Jacobi guesses for the next pass: drawn at this pass's later positions within the row's own slots
        # (those it still needs).
        m = max(0, min(drafts[b] - a, room[b] - a - 2))
        if m:
            g_prob[b, :m] = p[b, a + 1:a + 1 + m]
            g_tok[b, :m] = torch.multinomial(g_prob[b, :m], 1, generator=g)[:, 0]
        count[b] = m
    return new, Guesses(g_tok, g_prob, count), _judged(kept, valid)
