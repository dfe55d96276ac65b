"""The compiled CPU decode kernels against PyTorch, and the engine with them against the engine without."""

import shutil

import pytest
import torch
import torch.nn.functional as F

from lvm.generate import kernels
from lvm.generate.engine import Engine
from lvm.generate.sampling import Sampling
from lvm.model import ModelConfig
from lvm.tokens import TokenLayout

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def kn():
    if not (shutil.which("c++") or shutil.which("g++")):
        pytest.skip("no C++ compiler: the engine decodes with PyTorch ops (tested in test_generate)")
    k = kernels.load()
    assert k is not None, f"kernels failed to build: {kernels.why_not()}"
    return k


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("B", [1, 2, 3, 5, 9])
def test_linear_matches_torch(kn, B, dtype):
    g = torch.Generator().manual_seed(B)
    w = torch.randn(37, 70, generator=g).to(dtype)  # 70 inputs: a 16-lane (or 32-pair) body and a tail
    x = torch.randn(B, 70, generator=g)
    ref = rounded_inputs(kn, x, w).double() @ w.double().T
    torch.testing.assert_close(kn.linear(x, w).double(), ref, rtol=1e-5, atol=1e-4)


def rounded_inputs(kn, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x as the kernel's products take it: with bf16 weights on a CPU with bf16 dot products, the inputs of
    its whole 32-value steps rounded to bf16 (the rest stay fp32)."""
    if not (kn.dot_bf16 and w.dtype == torch.bfloat16):
        return x
    body = x.shape[-1] - x.shape[-1] % 32
    return torch.cat([x[..., :body].bfloat16().float(), x[..., body:]], dim=-1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("T", [1, 5, 300])  # 300 > the kernel's 128-key chunk: the running max rescales
def test_attend_matches_sdpa_with_gqa_and_cache_views(kn, T, dtype):
    g = torch.Generator().manual_seed(T)
    B, H, Hkv, D, Tmax = 2, 6, 3, 16, 320
    # Views of a bigger cache (more rows, longer context), as the engine passes them.
    kc = torch.randn(3, Hkv, Tmax, D, generator=g).to(dtype)[:B]
    vc = torch.randn(3, Hkv, Tmax, D, generator=g).to(dtype)[:B]
    q = torch.randn(B, H, D, generator=g) * 3
    out = kn.attend(q, kc, vc, T, D ** -0.5)
    ref = F.scaled_dot_product_attention(q[:, :, None].double(), kc[:, :, :T].double(), vc[:, :, :T].double(),
                                         enable_gqa=True)[:, :, 0]
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


K = 64


def _tiny(seed: int):
    """A 2-layer GQA model with 16-token images and a 4-image context, and its layout."""
    torch.manual_seed(seed)
    m = ModelConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, codebook_size=K, max_position_embeddings=256).build().eval()
    return m, TokenLayout(codebook_size=K, tokens_per_image=16, images_per_context=4)


def test_engine_with_kernels_close_to_without(kn):
    m, layout = _tiny(seed=0)
    fast = Engine(m, layout=layout, precision="bf16", max_context=64)
    plain = Engine(m, layout=layout, precision="bf16", max_context=64, kernels=False)
    assert fast.kernels is not None and fast.k_cache.dtype == torch.bfloat16
    assert plain.kernels is None and plain.k_cache.dtype == torch.float32
    prompt = torch.randint(0, K, (2, 40), generator=torch.Generator().manual_seed(1))
    for e in (fast, plain):
        e.forward(prompt, 0)
    for pos in range(40, 44):  # several decode steps: each reads what the previous ones cached
        tok = torch.randint(0, K, (2, 1), generator=torch.Generator().manual_seed(pos))
        a, b = fast.forward(tok, pos), plain.forward(tok, pos)
        # Only rounding differs (bf16 cache vs fp32 cache, fp32 vs bf16 matrix inputs).
        assert (a - b).abs().max() <= 0.02 * b.abs().max(), pos
    out = fast.generate(prompt[0, :32].view(-1, 16), n_new=1, candidates=3, sampling=Sampling(temperature=1.0))
    assert out.images.shape == (3, 1, 16) and int(out.images.max()) < K


def test_prefill_with_the_kernels_attention_close_to_sdpa(kn):
    """Where a bf16 cache has bf16 dot products the prompt's attention runs in the kernels: a whole prompt and
    a chunk after cached tokens (a crop's prefill) give SDPA's logits up to bf16 rounding."""
    if not kn.dot_bf16:
        pytest.skip("this CPU has no bf16 dot products: the prefill uses SDPA")
    torch.manual_seed(3)
    m = ModelConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                    codebook_size=K, max_position_embeddings=256).build().eval()  # head size 32: the dot path
    layout = TokenLayout(codebook_size=K, tokens_per_image=16, images_per_context=4)
    fast = Engine(m, layout=layout, precision="bf16", max_context=64)
    plain = Engine(m, layout=layout, precision="bf16", max_context=64, kernels=False)
    prompt = torch.randint(0, K, (2, 40), generator=torch.Generator().manual_seed(4))
    for start, end in ((0, 40), (0, 24), (24, 40)):
        a, b = fast.forward(prompt[:, start:end], start), plain.forward(prompt[:, start:end], start)
        assert (a - b).abs().max() <= 0.03 * b.abs().max(), (start, end)


def test_other_dtypes_are_refused(kn):
    with pytest.raises(RuntimeError, match="bfloat16 or float32"):
        kn.linear(torch.randn(1, 16), torch.randn(4, 16).half())
    with pytest.raises(RuntimeError, match="v must match k"):
        k = torch.randn(1, 1, 4, 16)
        kn.attend(torch.randn(1, 1, 16), k, k.bfloat16(), 4, 0.25)


def test_fp32_engine_uses_kernels_and_equals_hf_greedy(kn):
    """Under precision=auto an AVX2 CPU gets fp32: that engine decodes with the fp32 kernels, exactly."""
    m, layout = _tiny(seed=1)
    e = Engine(m, layout=layout, precision="fp32", max_context=64)
    assert e.kernels is not None and e.k_cache.dtype == torch.float32 and "kernels" in e.describe()
    prompt = torch.randint(0, K, (2, 16), generator=torch.Generator().manual_seed(2))
    out = e.generate(prompt, n_new=1, sampling=Sampling(temperature=0)).images[0, 0]
    seq = prompt.reshape(1, -1)
    with torch.no_grad():
        ref = m.generate(seq, attention_mask=torch.ones_like(seq), do_sample=False, max_new_tokens=16,
                         min_new_tokens=16, suppress_tokens=list(range(K, m.config.vocab_size)),
                         pad_token_id=K)[0, seq.shape[1]:]
    assert torch.equal(out, ref)


def test_build_targets_the_isa_torch_dispatches_to(monkeypatch):
    """Under ATEN_CPU_CAPABILITY=avx2 (an AVX2 machine, or its simulation) the kernels are AVX2 code, in a
    module of their own; an AVX-512 build is never reused for it."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("x86 only")
    from lvm_base import hardware

    def torch_runs(cap):  # what detect() reads from torch, which honours ATEN_CPU_CAPABILITY at start-up
        monkeypatch.setattr(hardware, "detect", lambda: hardware.Hardware(cpu_capability=cap))

    torch_runs("AVX2")
    assert kernels.march() == "x86-64-v3" and kernels._name().endswith("_x8664v3")
    torch_runs("DEFAULT")
    assert kernels.march() == "x86-64-v2"
    torch_runs("AVX512")
    assert kernels.march() == "native" and "_x86" not in kernels._name()


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setattr(kernels, "_tried", False)
    monkeypatch.setattr(kernels, "_module", None)
    monkeypatch.setattr(kernels, "_why_not", None)
    monkeypatch.setenv("LVM_KERNELS", "0")
    assert kernels.load() is None and kernels.why_not() == "LVM_KERNELS=0"
