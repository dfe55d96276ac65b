"""Speculative decoding: verification passes score like steps, greedy output equals plain greedy output on
every decoding path, rows roll back independently, sampled output follows the model's distribution (and
the test that says so fails for a wrong acceptance rule), the draft schedule, and storage precision."""

import itertools

import pytest
import torch

from lvm.generate import speculative
from lvm.generate.engine import Engine
from lvm.generate.sampling import Sampling, next_probs
from lvm.model import ModelConfig
from lvm.tokens import TokenLayout

from tiny import tiny_decoder

K, TPI = 64, 16
LAYOUT = TokenLayout(codebook_size=K, tokens_per_image=TPI, images_per_context=4)
GREEDY = Sampling(temperature=0)
PATHS = {"kernels": {}, "torch-ops": dict(kernels=False), "static-step": dict(static_step=True)}

pytestmark = pytest.mark.usefixtures("one_thread")


def _engine(m, layout=LAYOUT, **kw):
    e = Engine(m, layout=layout, precision=kw.pop("precision", "fp32"), max_context=layout.context_length, **kw)
    e.SPAN = layout.tokens_per_image  # static spans of one small image: passes cross span boundaries
    return e


@pytest.fixture(scope="module")
def model():
    return tiny_decoder(K, peaked=True)


@pytest.fixture(scope="module")
def copier():
    """lvm-small's priors at toy width, untrained: it predicts the previous image's cell, so previous-image
    drafts are mostly accepted (real 256-token images; these priors are laid out for them)."""
    torch.manual_seed(0)
    cfg = ModelConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                      codebook_size=K, max_position_embeddings=1024, grid_rope=True, attention_bias=True,
                      grid_heads=2, grid_copy=0.5)
    return cfg.build().eval()


def _prompts(n_images, seeds=(1, 2, 3)):
    return [torch.randint(0, K, (n_images, TPI), generator=torch.Generator().manual_seed(s)) for s in seeds]


def test_verification_scores_each_token_as_a_step_does(model):
    """Q tokens per row at per-row positions in one pass = Q one-token steps: bit for bit on the kernels
    (batch-invariant), to rounding on PyTorch ops and on the static (CUDA) pass; and close to HF."""
    seq = torch.randint(0, K, (3, 40), generator=torch.Generator().manual_seed(0))
    starts, Q = [20, 23, 27], 6
    with torch.no_grad():
        hf = torch.stack([model(seq[r:r + 1, :s + Q]).logits[0, s:s + Q] for r, s in enumerate(starts)])
    for name, kw in PATHS.items():
        steps = []
        for r, s in enumerate(starts):
            e = _engine(model, **kw)
            e.forward(seq[r:r + 1, :s], 0)
            steps.append(torch.stack([e.forward(seq[r:r + 1, s + j:s + j + 1], s + j)[0] for j in range(Q)]))
        steps = torch.stack(steps)
        e = _engine(model, **kw)
        for r in (2, 1, 0):  # each row's own prefix in its cache row (prefilled in row 0, then moved)
            e.forward(seq[r:r + 1, :starts[r]], 0)
            if r:
                e.cache.k[:, r], e.cache.v[:, r] = e.cache.k[:, 0].clone(), e.cache.v[:, 0].clone()
        tokens = torch.stack([seq[r, s:s + Q] for r, s in enumerate(starts)])
        one_pass = e.forward(tokens, starts, verify=True)
        if e.kernels is not None:
            assert torch.equal(one_pass, steps), name
        torch.testing.assert_close(one_pass, steps, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(one_pass, hf, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("hd", [16, 20, 64])  # one vector (AVX-512), a partial one, lvm-small's heads
def test_kernels_are_batch_invariant(dtype, hd):
    """A row's product and a query's attention have the same bits whatever comes with them in the call."""
    from lvm.generate import kernels, weights

    kn = kernels.load()
    if kn is None:
        pytest.skip(f"no compiled kernels: {kernels.why_not()}")
    g = torch.Generator().manual_seed(0)
    w, x = torch.randn(37, 70, generator=g).to(dtype), torch.randn(9, 70, generator=g)
    full = kn.linear(x, w)
    assert all(torch.equal(full[b:b + 1], kn.linear(x[b:b + 1].contiguous(), w)) for b in range(9))
    # 300 positions: blocks of keys and their remainders; 5 queries: widened (scratch) and in-place caches.
    kc, vc = (torch.randn(3, 2, 300, hd, generator=g).to(dtype) for _ in range(2))
    q, lengths = torch.randn(3, 5, 4, hd, generator=g), torch.tensor([1, 130, 290])
    for Q in (5, 2):
        out = kn.attend_rows(q[:, :Q].contiguous(), kc, vc, lengths, 0.25)
        for b, j in itertools.product(range(3), range(Q)):
            one = kn.attend(q[b:b + 1, j].contiguous(), kc[b:b + 1], vc[b:b + 1], int(lengths[b]) + j, 0.25)
            assert torch.equal(out[b, j], one[0])
    # The PyTorch twin, with the query rounded to bf16 where the kernels take a bf16 cache with bf16 dot
    # products; they round the softmax weights too (each block's, against its running max), which the twin
    # does not: there, 1e-3 of values of size 1 (a mistake in the products costs far more).
    dot = kernels.bf16_dots(kn, dtype, hd)
    ref = weights.attend_rows((q.bfloat16() if dot else q).double(), kc.double(), vc.double(), lengths, 0.25)
    torch.testing.assert_close(out.double(), ref[:, :2], rtol=1e-5, atol=4e-3 if dot else 1e-5)


def test_elementwise_kernels_match_pytorch():
    """The fused norm, rope and SiLU-gate steps equal their PyTorch forms, row by row."""
    from lvm.generate import kernels, layers

    kn = kernels.load()
    if kn is None:
        pytest.skip(f"no compiled kernels: {kernels.why_not()}")
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(3, 2, 40, generator=g), torch.randn(40, generator=g)
    torch.testing.assert_close(kn.rms_norm(x, w, 1e-6), layers.rms(x, w, 1e-6), rtol=1e-5, atol=1e-6)
    qkv = torch.randn(2, 3, 5, 8, generator=g)  # rope the first 3 heads of 5, as the layer loop does
    cos, sin = torch.randn(2, 3, 8, generator=g), torch.randn(2, 3, 8, generator=g)
    for c, s in ((cos, sin), (cos[:1], sin[:1])):  # per row, and one set of positions for every row
        want = layers.rope(qkv[:, :, :3], c[:, :, None], s[:, :, None])
        torch.testing.assert_close(kn.rope(qkv[:, :, :3], c, s), want)
    gu = torch.randn(4, 2, 30, generator=g)
    torch.testing.assert_close(kn.silu_mul(gu), layers.glu(gu), rtol=1e-5, atol=1e-6)
    assert torch.equal(kn.silu_mul(gu)[1:2], kn.silu_mul(gu[1:2].contiguous()))


@pytest.mark.parametrize("path", list(PATHS))
def test_greedy_speculative_equals_plain_greedy(model, path):
    """Several prompts, 1 and 3 candidates, through a context crop; the random model's guesses are mostly
    rejected, so corrections and Jacobi guesses do the work."""
    e = _engine(model, **PATHS[path])
    for prompt in _prompts(2):
        for c in (1, 3):
            plain = e.generate(prompt, n_new=3, candidates=c, sampling=GREEDY, speculative=0)
            spec = e.generate(prompt, n_new=3, candidates=c, sampling=GREEDY, speculative=7)
            assert torch.equal(plain.images, spec.images)
            assert spec.dropped_images == plain.dropped_images == 1 and plain.passes == 3 * TPI
            assert spec.passes < plain.passes  # some guesses were right


def test_sampling_that_is_greedy_stays_greedy(model):
    """top-k 1 or a tiny top-p at any temperature is the argmax: speculative sampling = plain greedy."""
    e = _engine(model)
    prompt = _prompts(2)[0]
    ref = e.generate(prompt, n_new=2, candidates=2, sampling=GREEDY, speculative=0).images
    for s in (Sampling(temperature=0.7, top_k=1, seed=3), Sampling(temperature=1.5, top_k=0, top_p=1e-6),
              Sampling(temperature=0, top_k=5, top_p=0.5)):
        assert torch.equal(e.generate(prompt, n_new=2, candidates=2, sampling=s, speculative=7).images, ref)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_verification_equals_plain_greedy(model):
    """On CUDA the verification passes replay captured graphs (one per rows, tokens per row and span)."""
    gpu = model.to("cuda")
    try:
        graphed = _engine(gpu)
        eager = _engine(gpu, cuda_graphs=False)
        for prompt in _prompts(2, seeds=(4, 5)):
            plain = eager.generate(prompt, n_new=2, candidates=2, sampling=GREEDY, speculative=0).images
            assert torch.equal(graphed.generate(prompt, n_new=2, candidates=2, sampling=GREEDY).images, plain)
        assert len({q for _, q, _ in graphed._graphs}) > 1  # plain steps and verification passes
    finally:
        model.to("cpu")


def test_copy_model_greedy_is_fast_and_exact(copier):
    """Next-frame-like prompts (each frame changes a few cells of the one before): the copy prior accepts
    most previous-image drafts; output is plain greedy's, in far fewer passes."""
    layout = TokenLayout(codebook_size=K, images_per_context=4)
    e = _engine(copier, layout)
    g = torch.Generator().manual_seed(0)
    frames = [torch.randint(0, K, (256,), generator=g)]
    for _ in range(2):
        f = frames[-1].clone()
        f[torch.randperm(256, generator=g)[:20]] = torch.randint(0, K, (20,), generator=g)
        frames.append(f)
    prompt = torch.stack(frames)
    plain = e.generate(prompt, n_new=1, candidates=2, sampling=GREEDY, speculative=0)
    spec = e.generate(prompt, n_new=1, candidates=2, sampling=GREEDY)
    assert torch.equal(plain.images, spec.images)
    assert spec.passes_per_image <= 0.5 * plain.passes_per_image and spec.acceptance_length > 2


def _oracle(truth):
    """A `propose` whose guesses are the true greedy tokens up to a per-row, per-pass cut, then wrong:
    rows keep different numbers of guesses in a pass."""
    real, calls = speculative.propose, [0]

    def propose(seq, lens, img0, tpi, draft, guesses):
        tokens, _ = real(seq, lens, img0, tpi, draft, None)
        calls[0] += 1
        for b, at in enumerate(lens):
            cut = draft - (b + calls[0]) % 3
            for m in range(draft):
                if at - img0 + m < tpi:
                    good = int(truth[b, at - img0 + m])
                    tokens[b, 1 + m] = good if m < cut else (good + 1) % K
        return tokens, None

    return propose


def test_rows_accept_different_prefixes_and_roll_back(model, monkeypatch):
    """Each candidate keeps its own number of guesses in a pass; outputs stay plain greedy's, and each row's
    cache holds exactly what a fresh prefill of its final sequence computes."""
    e = _engine(model)
    prompt = _prompts(1)[0]
    plain = e.generate(prompt, n_new=1, candidates=3, sampling=GREEDY, speculative=0)
    gains, real = [], speculative.speculate

    def speculate(*a, **k):
        out = real(*a, **k)
        gains.append([len(t) for t in out[0]])
        return out

    monkeypatch.setattr(speculative, "propose", _oracle(plain.images[:, 0]))
    monkeypatch.setattr(speculative, "speculate", speculate)
    spec = e.generate(prompt, n_new=1, candidates=3, sampling=GREEDY, speculative=5)
    assert torch.equal(plain.images, spec.images)
    assert any(len(set(g)) == 3 for g in gains), gains  # three rows, three different accepted prefixes
    _cache_matches_a_fresh_prefill(model, e, prompt, spec.images)


def _cache_matches_a_fresh_prefill(model, e, prompt, images):
    B = images.shape[0]
    seqs = torch.cat([prompt.reshape(1, -1).expand(B, -1), images.reshape(B, -1)], 1)
    n = seqs.shape[1] - 1  # every row's cache holds all but its last token
    fresh = _engine(model)
    fresh.forward(seqs[:, :n], 0)
    for mine, ref in ((e.cache.k, fresh.cache.k), (e.cache.v, fresh.cache.v)):
        torch.testing.assert_close(mine[:, :B, :, :n], ref[:, :B, :, :n], rtol=1e-4, atol=1e-4)


def test_sampled_rows_roll_back_independently(model):
    """Sampling: candidates accept different prefixes by chance; each row's cache stays its own sequence's."""
    e = _engine(model)
    prompt = _prompts(1)[1]
    out = e.generate(prompt, n_new=1, candidates=4, sampling=Sampling(temperature=1.0, top_k=0), speculative=7)
    assert len({tuple(r.tolist()) for r in out.images[:, 0]}) == 4 and out.passes < TPI
    _cache_matches_a_fresh_prefill(model, e, prompt, out.images)


# ---- the distribution: sampled speculative output follows the model's, exactly ----

KD = 4  # 4 codes, 4-token images, 3-image context: every 4-token image's probability can be enumerated
DIST = TokenLayout(codebook_size=KD, tokens_per_image=4, images_per_context=3)
DIST_PROMPT = torch.tensor([[0, 1, 2, 3], [1, 1, 2, 2]])
VARIANTS = [Sampling(temperature=1.0, top_k=0), Sampling(temperature=0.7, top_k=3),
            Sampling(temperature=1.5, top_k=0, top_p=0.8)]
ROUNDS, ROWS = 160, 64  # 10240 images per test: deterministic seeds, so the outcome never changes


@pytest.fixture(scope="module")
def four():
    torch.manual_seed(1)
    m = ModelConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                    codebook_size=KD, max_position_embeddings=256).build().eval()
    with torch.no_grad():
        m.lm_head.weight.mul_(8)  # sharper than uniform: guesses are kept or rejected, both often
    conts = torch.tensor(list(itertools.product(range(KD), repeat=4)))
    seqs = torch.cat([DIST_PROMPT.reshape(1, -1).expand(len(conts), -1), conts], 1)
    with torch.no_grad():
        logits = m(seqs).logits[:, 7:11]  # HF's own forward: what predicts each of the 4 new tokens
    return m, conts, logits


def _p_value(engine, conts, logits, s, draft) -> float:
    """Chi-square p-value of ROUNDS x ROWS generated images against the exact distribution of 4-token
    images (HF's logits, filtered as sampling filters them); 0 if an image outside its support comes out."""
    exact = next_probs(logits, s, KD).double().gather(2, conts[..., None])[..., 0].prod(1)
    counts = torch.zeros(len(conts), dtype=torch.float64)
    for i in range(ROUNDS):
        out = engine.generate(DIST_PROMPT, candidates=ROWS, sampling=s, seeds=range(i * ROWS, (i + 1) * ROWS),
                              speculative=draft)
        counts += torch.bincount((out.images[:, 0] * torch.tensor([64, 16, 4, 1])).sum(1), minlength=len(conts))
    expected = exact * counts.sum()
    if counts[expected == 0].sum() > 0:
        return 0.0
    counts, expected = counts[expected > 0], expected[expected > 0]
    big = expected >= 5  # cells expected fewer than 5 times are pooled into one
    obs = torch.cat([counts[big], counts[~big].sum().view(1)])
    exp = torch.cat([expected[big], expected[~big].sum().view(1)])
    obs, exp = obs[exp > 0], exp[exp > 0]
    stat = ((obs - exp) ** 2 / exp).sum()
    return float(torch.special.gammaincc(torch.tensor((len(obs) - 1) / 2.0, dtype=torch.float64), stat / 2))


@pytest.mark.parametrize("s", VARIANTS, ids=["t1", "t0.7-topk3", "t1.5-topp0.8"])
def test_sampled_speculative_follows_the_model_exactly(four, s):
    m, conts, logits = four
    e = _engine(m, DIST, max_batch=ROWS)
    assert _p_value(e, conts, logits, s, draft=3) > 1e-3


def test_the_distribution_test_rejects_wrong_acceptance_rules(four, monkeypatch):
    """The check above has power: plain sampling passes it, and acceptance rules that are wrong fail it by
    far (keeping every guess; drawing a rejected position from p instead of the residual)."""
    m, conts, logits = four
    e = _engine(m, DIST, max_batch=ROWS)
    s = VARIANTS[1]
    assert _p_value(e, conts, logits, s, draft=0) > 1e-3
    with monkeypatch.context() as mp:
        mp.setattr(speculative, "keeps", lambda u, ratio: torch.ones_like(u, dtype=torch.bool))
        assert _p_value(e, conts, logits, s, draft=3) < 1e-6
    with monkeypatch.context() as mp:
        mp.setattr(speculative, "residual", lambda p, q: p)
        assert _p_value(e, conts, logits, s, draft=3) < 1e-6


# ---- the draft schedule and storage precision ----

def test_draft_schedule_follows_acceptance():
    J, S, C = speculative.JACOBI, speculative.SAME, speculative.CHANGED
    best = speculative.best_draft
    assert best([0.99] * 15, (0.3, 0.25)) >= 7 and best([0.99] * 15, (0.0, 0.03)) == 15
    assert best([0.1] * 15, (0.0, 0.15)) == 0  # plain passes pay more
    assert best([0.45] * 15, (0.0, 0.05)) > 0 and best([0.45] * 15, (0.3, 0.25)) == 0  # a pass's fixed cost counts
    assert best([0.99] * 5 + [0.1] * 10, (0.3, 0.25)) == 5  # drafts stop before the guesses that fail
    rates = [0.99] * 10 + [0.05] * 2
    assert best(rates, (0.3, 0.25)) == 10 and best(rates, (0.3, 0.25), lengths=(1, 3, 7)) == 7  # graph shapes
    sched = speculative.Schedule(most=15, cost=(0.3, 0.25))
    assert sched.next(lambda: [S] * 15) > 0  # optimistic start
    for _ in range(20):
        sched.saw([C] * 8, 0, 1)  # changed cells: rejected
        sched.saw([S] * 8, 8, 8)  # cells as they were: kept
    assert sched.rates[C] < 0.3 and sched.rates[S] > 0.95 and sched.rates[J] == 0.9
    assert sched.next(lambda: [S] * 6 + [C] * 9) == 6 and sched.next(lambda: [C] * 15) == 0
    # Plain passes, then a short speculative one to look again; still nothing accepted: plain again.
    assert [sched.next(lambda: [C] * 15) for _ in range(speculative.PROBE_EVERY)] == [0] * (speculative.PROBE_EVERY - 1) + [3]
    sched.saw([C] * 3, 0, 1)
    assert sched.next(lambda: [C] * 15) == 0 and sched.plain_left == speculative.PROBE_EVERY
    assert sched.next(lambda: []) == 0 and speculative.Schedule(most=0, cost=(0.0, 0.1)).next(lambda: [S] * 4) == 0
    assert speculative.guess_kinds([True, False, True, True], 0, 1, 15) == [J, C, S]  # the last cell: no guess


def test_bf16_greedy_speculative_equals_plain(copier):
    """A bf16 cache (scored with bf16 dot products where the CPU has them) keeps greedy output exact."""
    layout = TokenLayout(codebook_size=K, images_per_context=4)
    e = _engine(copier, layout, precision="bf16")
    prompt = torch.randint(0, K, (3, 256), generator=torch.Generator().manual_seed(4))
    plain = e.generate(prompt, n_new=1, candidates=2, sampling=GREEDY, speculative=0)
    assert torch.equal(e.generate(prompt, n_new=1, candidates=2, sampling=GREEDY, speculative=15).images, plain.images)


def test_storage_apart_from_compute(model):
    from lvm_base.hardware import STORAGE_MIN_BYTES, Plan, with_storage

    auto = Plan("cpu", "fp32", requested=("cpu", "auto"))
    assert with_storage(auto, STORAGE_MIN_BYTES).storage == "bf16"  # big weights: bytes bound decoding
    assert with_storage(auto, STORAGE_MIN_BYTES - 1).storage == ""  # in cache: fp32 is as fast
    assert with_storage(Plan("cpu", "fp32", requested=("cpu", "fp32")), STORAGE_MIN_BYTES).storage == ""
    assert with_storage(Plan("cuda:0", "bf16"), STORAGE_MIN_BYTES).storage == ""
    assert "bf16 storage" in with_storage(auto, 0, "bf16").describe()
    e = _engine(model, storage="bf16")
    if e.kernels is None:
        pytest.skip("bf16 storage needs the compiled kernels")
    assert e.plan.precision == "fp32" and e.plan.storage == "bf16" and "bf16 storage" in e.describe()
    assert e.layers[0]["wqkv"].dtype == torch.bfloat16 and e.k_cache.dtype == torch.bfloat16
    assert e.act_dtype == torch.float32
    ref = _engine(model)
    seq = torch.randint(0, K, (2, 30), generator=torch.Generator().manual_seed(5))
    # The prefill computes fp32 from the bf16 weights, the step reads bf16 weights and cache.
    got = [e.forward(seq[:, :29], 0), e.forward(seq[:, 29:], 29)]
    want = [ref.forward(seq[:, :29], 0), ref.forward(seq[:, 29:], 29)]
    for a, b in zip(got, want):
        assert (a - b).abs().max() <= 0.05 * b.abs().max()
    prompt = _prompts(2)[0]
    plain = e.generate(prompt, n_new=1, candidates=2, sampling=GREEDY, speculative=0)
    assert torch.equal(e.generate(prompt, n_new=1, candidates=2, sampling=GREEDY).images, plain.images)


@pytest.mark.parametrize("words", [("prompt",), ("eval", "tasks")], ids=" ".join)
def test_the_commands_can_turn_speculation_off(words, capsys, model):
    from lvm.cli import main
    from lvm.eval.tasks.config import SuiteConfig

    with pytest.raises(SystemExit):
        main([*words, "--help"])
    assert "--no-speculative" in capsys.readouterr().out
    assert SuiteConfig().speculative and not SuiteConfig(speculative=False).speculative
    e = _engine(model, speculative=False)
    assert e.draft == 0 and "plain decoding" in e.describe()
    out = e.generate(_prompts(1)[0], sampling=GREEDY)
    assert out.passes == TPI and out.draft == 0 and out.acceptance_length == 1
