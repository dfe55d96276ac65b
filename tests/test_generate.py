"""The generation engine: cached greedy == uncached recomputation (ours and HF's), no id >= K, seeds."""

import pytest
import torch

from lvm.generate.engine import Engine
from lvm.generate.sampling import Sampling
from lvm.model import ModelConfig
from lvm.tokens import TokenLayout
from lvm_base.errors import InputError

# A tiny codebook (vocabulary 164) and, to keep the tests fast, 16-token "images" with a 4-image context;
# the engine takes the layout as given, the real one only changes the numbers.
K, TPI = 64, 16
LAYOUT = TokenLayout(codebook_size=K, tokens_per_image=TPI, images_per_context=4)


def engine(m, precision="bf16", **kw):
    return Engine(m, layout=LAYOUT, precision=precision, max_context=LAYOUT.context_length, **kw)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: decoding is latency-bound


# "grid": attention biases and binary rope (lvm.model's grid priors) must reach the engine too.
@pytest.fixture(scope="module", params=["plain", "grid"])
def model(request):
    torch.manual_seed(0)
    if request.param == "plain":
        cfg = ModelConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, codebook_size=K, max_position_embeddings=256)
    else:
        cfg = ModelConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                          num_key_value_heads=1, codebook_size=K, max_position_embeddings=256, grid_rope=True,
                          attention_bias=True, grid_heads=1)
    m = cfg.build().eval()
    with torch.no_grad():  # biases that matter (HF initialises them to zero; grid heads set only q/k)
        for p in m.parameters():
            if p.ndim == 1 and p.abs().sum() == 0:
                p.normal_(0, 0.5)
    # Make the reserved ids the most likely ones, so masking them is really exercised.
    with torch.no_grad():
        m.lm_head.weight[K:] = m.lm_head.weight[:K].abs().mean() * 50 * torch.sign(torch.randn(100, 64))
        m.lm_head.bias = None
    return m


def _hf_greedy(m, prompt, n_new, context_images=4):
    """Full recomputation with HF's own forward for every token; crop to the last 3 images when full."""
    seq = prompt.reshape(1, -1)
    out = []
    with torch.no_grad():
        for _ in range(n_new):
            if seq.shape[1] + TPI > TPI * context_images:
                seq = seq[:, -TPI * (context_images - 1):]
            for _ in range(TPI):
                tok = m(seq).logits[0, -1, :K].argmax()
                out.append(int(tok))
                seq = torch.cat([seq, tok.view(1, 1)], 1)
    return torch.tensor(out).view(n_new, TPI)


# fp32 decodes with the compiled kernels where they build, "torch" with PyTorch ops; both must equal HF.
@pytest.mark.parametrize("decode", ["kernels", "torch"])
def test_greedy_cached_equals_uncached(model, decode):
    e = engine(model, "fp32", kernels=decode == "kernels")
    prompt = torch.randint(0, K, (2, TPI), generator=torch.Generator().manual_seed(1))
    greedy = Sampling(temperature=0)
    # 2 prompt images + 3 new ones > 4-image context: the third new image follows a crop.
    cached = e.generate(prompt, n_new=3, candidates=2, sampling=greedy)
    assert cached.dropped_images == 1 and "kept the last 3 images" in cached.notes[0]
    uncached = e.generate(prompt, n_new=3, candidates=1, sampling=greedy, use_cache=False)
    ref = _hf_greedy(model, prompt, 3)
    assert torch.equal(cached.images[0], ref)
    assert torch.equal(cached.images[1], ref)
    assert torch.equal(uncached.images[0], ref)


def test_bf16_engine_close_to_hf_logits(model):
    e = engine(model)
    seq = torch.randint(0, K, (1, 60), generator=torch.Generator().manual_seed(2))
    e.forward(seq[:, :32], 0)
    ours = e.forward(seq[:, 32:59], 32)  # a chunk after cached tokens (masked path)
    step = e.forward(seq[:, 59:], 59)  # one-token decoding (the compiled kernels when built)
    with torch.no_grad():
        ref = model(seq).logits[:, -2:]
    assert torch.allclose(ours, ref[:, 0], atol=0.05 * ref.abs().max().item())
    assert torch.allclose(step, ref[:, 1], atol=0.05 * ref.abs().max().item())


def test_never_samples_reserved_ids(model):
    e = engine(model)
    prompt = torch.randint(0, K, (1, TPI), generator=torch.Generator().manual_seed(3))
    # Logits favour the reserved ids heavily (fixture): without masking, most samples would be >= K.
    with torch.no_grad():
        logits = e.forward(prompt.view(1, -1), 0)
    assert logits[0].argmax() >= K
    gens = [torch.Generator().manual_seed(s) for s in range(16)]
    for s in (Sampling(temperature=5.0, top_k=0), Sampling(temperature=1.0, top_k=0, top_p=0.99),
              Sampling(temperature=2.0, top_k=200, top_p=1.0), Sampling(temperature=0)):
        for _ in range(50):
            ids = e.sample(logits.expand(16, -1), s, gens)
            assert int(ids.max()) < K and int(ids.min()) >= 0
    out = e.generate(prompt, n_new=1, candidates=4, sampling=Sampling(temperature=3.0, top_k=0))
    assert int(out.images.max()) < K  


def test_seeds_same_and_different(model):
    e = engine(model)
    prompt = torch.randint(0, K, (1, TPI), generator=torch.Generator().manual_seed(4))
    s = Sampling(temperature=1.0, top_k=0)
    out = e.generate(prompt, n_new=1, candidates=4, sampling=s, seeds=[7, 8, 7, 9])
    imgs = out.images[:, 0]
    assert torch.equal(imgs[0], imgs[2])  # same seed, same image
    assert not torch.equal(imgs[0], imgs[1]) and not torch.equal(imgs[1], imgs[3])
    # A candidate's image does not depend on the batch it is generated in.
    alone = e.generate(prompt, n_new=1, candidates=1, sampling=s, seeds=[8])
    assert torch.equal(alone.images[0, 0], imgs[1])
    # Default seeds are seed + candidate index: all different.
    d = e.generate(prompt, n_new=1, candidates=3, sampling=s).images[:, 0]
    assert len({tuple(r.tolist()) for r in d}) == 3


def test_top_k_one_is_greedy(model):
    e = engine(model, "fp32")
    prompt = torch.randint(0, K, (1, TPI), generator=torch.Generator().manual_seed(5))
    a = e.generate(prompt, sampling=Sampling(temperature=0)).images
    b = e.generate(prompt, sampling=Sampling(temperature=0.7, top_k=1, seed=3)).images
    assert torch.equal(a, b)


def test_sampling_defaults_have_one_home():
    """Every default of a generation's settings is lvm.generate.sampling.DEFAULTS (the task suite's: SUITE),
    read by each place that takes the settings; the values are the release's (temperature 1, top-k 50)."""
    import dataclasses
    import inspect

    from lvm.eval.tasks.config import SuiteConfig
    from lvm.generate.sampling import DEFAULTS, SUITE, SUITE_TASK_TEMPERATURE
    from lvm.model import generation_config
    from lvm.prompt.modes import run_prompt
    from lvm.serve.service import PromptService

    assert (DEFAULTS.temperature, DEFAULTS.top_k, DEFAULTS.top_p, DEFAULTS.seed) == (1.0, 50, 1.0, 0)
    assert (DEFAULTS.n, DEFAULTS.candidates) == (1, 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULTS.top_k = 40
    assert dataclasses.asdict(Sampling()) == {k: getattr(DEFAULTS, k) for k in ("temperature", "top_k", "top_p",
                                                                                "seed")}
    gc = generation_config(LAYOUT)
    assert (gc.temperature, gc.top_k, gc.top_p) == (DEFAULTS.temperature, DEFAULTS.top_k, DEFAULTS.top_p)
    for fn in (run_prompt, PromptService.generate):
        p = inspect.signature(fn).parameters
        assert {k: p[k].default for k in ("candidates", "temperature", "top_k", "top_p", "seed")} == {
            k: getattr(DEFAULTS, k) for k in ("candidates", "temperature", "top_k", "top_p", "seed")}, fn
    s = SuiteConfig()
    assert (s.temperature, s.top_k, s.top_p, s.task_temperature) == (SUITE.temperature, 0, 0.9,
                                                                      dict(SUITE_TASK_TEMPERATURE))
    assert s.task_temperature == {"inpainting": 0.7} and s.task_temperature is not SUITE_TASK_TEMPERATURE


def test_bad_prompts(model):
    e = engine(model)
    with pytest.raises(InputError, match="image codes"):
        e.generate(torch.full((1, TPI), K))
    with pytest.raises(InputError, match="whole number"):
        e.generate(torch.zeros(TPI + 3, dtype=torch.long))
    with pytest.raises(InputError, match="top_p"):
        Sampling(top_p=0)


def test_released_layout_checkpoint(tmp_path):
    """An HF dir shaped like the released LVM-7B (vocab 8292, bos/eos 1/2 defaults) loads and never emits >= 8192."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=8292, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-6,
                      rope_theta=10000.0, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    m = LlamaForCausalLM(cfg)
    with torch.no_grad():
        m.lm_head.weight[8192:] += 1.0  # reserved ids would win without the mask
    m.save_pretrained(tmp_path)
    e = Engine.from_pretrained(tmp_path, device="cpu", max_batch=2)
    assert e.plan.device == "cpu" and e.plan.requested == ("cpu", "auto")
    assert e.layout.codebook_size == 8192 and e.context_images == 16 and e.layout.pad_id == 8192
    prompt = torch.randint(0, 8192, (16, 256), generator=torch.Generator().manual_seed(0))
    e.context = 256 * 3  # a short context keeps the test fast; 16 prompt images -> keep the last 2
    e.context_images = 3
    out = e.generate(prompt[:, :], n_new=1, candidates=2, sampling=Sampling(temperature=1.0, top_k=0))
    assert out.dropped_images == 14 and "kept the last 2 prompt images" in out.notes[0]
    assert int(out.images.max()) < 8192
    with pytest.raises(InputError, match="no config.json"):
        Engine.from_pretrained(tmp_path / "nope")
