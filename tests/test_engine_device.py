"""The engine on the device path (the code CUDA runs, exercised on the CPU), the policy's flags on the
generation commands, and a tiny `lvm bench generate`."""

import pytest
import torch

from lvm.cli import main
from lvm.generate.engine import Engine
from lvm.generate.sampling import Sampling
from lvm.tokens import TokenLayout

from tiny import tiny_decoder

K, TPI = 64, 16
LAYOUT = TokenLayout(codebook_size=K, tokens_per_image=TPI, images_per_context=4)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    return tiny_decoder(K, peaked=False)


def _engine(m, **kw):
    e = Engine(m, layout=LAYOUT, max_context=LAYOUT.context_length, **kw)
    e.SPAN = TPI  # spans of one small image, so decoding crosses span boundaries (and would change graphs)
    return e


def _hf_greedy(m, prompt, n_new):
    seq = prompt.reshape(1, -1)
    out = []
    with torch.no_grad():
        for _ in range(n_new):
            if seq.shape[1] + TPI > LAYOUT.context_length:
                seq = seq[:, -TPI * (LAYOUT.images_per_context - 1):]
            for _ in range(TPI):
                tok = m(seq).logits[0, -1, :K].argmax()
                out.append(int(tok))
                seq = torch.cat([seq, tok.view(1, 1)], 1)
    return torch.tensor(out).view(n_new, TPI)


@pytest.mark.parametrize("path", [dict(kernels=False), dict(static_step=True)], ids=["torch-ops", "static-step"])
def test_device_path_equals_hf_greedy(model, path):
    e = _engine(model, precision="fp32", **path)
    dev = next(model.parameters()).device
    assert e.k_cache.device == dev and e.cos.device == dev and e.kernels is None
    assert not e.cuda_graphs  # graphs are CUDA only
    prompt = torch.randint(0, K, (2, TPI), generator=torch.Generator().manual_seed(1))
    out = e.generate(prompt, n_new=3, candidates=2, sampling=Sampling(temperature=0))
    ref = _hf_greedy(model, prompt, 3)  # the third image follows a crop of the context
    assert torch.equal(out.images[0], ref) and torch.equal(out.images[1], ref)
    assert out.prefill_seconds > 0 and out.images.device.type == "cpu"


def test_static_step_equals_eager_step(model):
    """The graph-captured code, run eagerly: same logits as the CPU step at every position (across spans)."""
    ref = _engine(model, precision="fp32", kernels=False)
    st = _engine(model, precision="fp32", static_step=True)
    seq = torch.randint(0, K, (2, 40), generator=torch.Generator().manual_seed(2))
    a, b = ref.forward(seq[:, :20], 0), st.forward(seq[:, :20], 0)
    torch.testing.assert_close(a, b)
    for pos in range(20, 40):  # spans 32 and 48 (SPAN 16): the mask hides the cache past `pos`
        a, b = ref.forward(seq[:, pos:pos + 1], pos), st.forward(seq[:, pos:pos + 1], pos)
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    assert st._span(20) == 32 and st._span(47) == 48 and st._span(63) == 64


def test_static_step_in_half_precision_is_close(model):
    st = _engine(model, precision="bf16", static_step=True)
    assert st.k_cache.dtype == torch.bfloat16 and st.plan.precision == "bf16"
    seq = torch.randint(0, K, (1, 30), generator=torch.Generator().manual_seed(3))
    st.forward(seq[:, :29], 0)
    step = st.forward(seq[:, 29:], 29)
    with torch.no_grad():
        want = model(seq).logits[:, -1]
    assert (step - want).abs().max() <= 0.05 * want.abs().max()


def test_sampling_on_device_is_per_candidate(model):
    e = _engine(model, precision="fp32", static_step=True)
    prompt = torch.randint(0, K, (1, TPI), generator=torch.Generator().manual_seed(4))
    s = Sampling(temperature=1.0, top_k=0)
    many = e.generate(prompt, candidates=3, sampling=s, seeds=[5, 6, 5]).images[:, 0]
    alone = e.generate(prompt, candidates=1, sampling=s, seeds=[6]).images[0, 0]
    assert torch.equal(many[0], many[2]) and torch.equal(many[1], alone) and not torch.equal(many[0], many[1])


def test_precision_goes_through_the_policy(model):
    e = Engine(model, layout=LAYOUT, max_context=64, precision="fp32")
    assert e.plan.precision == "fp32" and e.dtype == torch.float32 and e.plan.device == "cpu"
    e = Engine(model, layout=LAYOUT, max_context=64, precision="auto")
    from lvm_base.hardware import resolve

    assert e.plan.precision == resolve("cpu", "auto").precision
    from lvm_base.errors import InputError

    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA GPU"):
            Engine(model, layout=LAYOUT, max_context=64, device="cuda")


def test_from_pretrained_shares_weights_with_the_model(tmp_path, model):
    model.save_pretrained(tmp_path)
    e = Engine.from_pretrained(tmp_path, device="cpu", precision="fp32", layout=LAYOUT, max_context=64)
    assert e.plan.requested == ("cpu", "fp32")
    w = e.layers[0]["wqkv"]
    assert w.dtype == torch.float32
    prompt = torch.randint(0, K, (2, TPI), generator=torch.Generator().manual_seed(5))
    out = e.generate(prompt, sampling=Sampling(temperature=0)).images[0]
    assert torch.equal(out, _hf_greedy(model, prompt, 1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_step_equals_eager_on_gpu(model):
    gpu = model.to("cuda")
    try:
        graphed = _engine(gpu, precision="fp32")
        eager = _engine(gpu, precision="fp32", cuda_graphs=False)
        assert graphed.cuda_graphs and graphed.k_cache.is_cuda
        prompt = torch.randint(0, K, (2, TPI), generator=torch.Generator().manual_seed(6))
        a = graphed.generate(prompt, n_new=2, sampling=Sampling(temperature=0)).images
        b = eager.generate(prompt, n_new=2, sampling=Sampling(temperature=0)).images
        assert graphed._graphs and torch.equal(a, b)
    finally:
        model.to("cpu")


# ---- the commands ----

COMMANDS = [("prompt",), ("eval", "perplexity"), ("eval", "tasks"), ("bench", "generate")]


@pytest.mark.parametrize("words", COMMANDS, ids=" ".join)
def test_help_mentions_device_and_precision(words, capsys):
    with pytest.raises(SystemExit):
        main([*words, "--help"])
    out = capsys.readouterr().out
    assert "--device" in out and "--precision" in out and "{auto,fp32,bf16,fp16}" in out
    assert "--dtype" not in out  # precision has one spelling


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("words", [("prompt",), ("prompt", "--prompt", "p.yaml"), ("prompt", "--batch", "b.jsonl"),
                                   ("eval", "tasks"), ("eval", "perplexity", "x.jsonl", "--model", "m",
                                                       "--tokenizer", "t"), ("bench", "generate")], ids=" ".join)
def test_device_cuda_without_a_gpu_is_one_line_exit_2(words, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    if "p.yaml" in words:  # a readable prompt file: --prompt is checked while the flags are parsed
        from PIL import Image

        Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
        (tmp_path / "p.yaml").write_text("mode: sequential\nimages: [a.png]\nn: 1\n")
    assert main([*words, "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "no CUDA GPU" in err[0]


def test_bench_generate_compares_precisions(tmp_path, capsys):
    yaml = tmp_path / "micro.yaml"
    yaml.write_text("hidden_size: 32\nintermediate_size: 64\nnum_hidden_layers: 1\nnum_attention_heads: 2\n"
                    "codebook_size: 1024\nmax_position_embeddings: 512\n")
    rc = main(["bench", "generate", "--model", str(yaml), "--candidates", "1", "--repeats", "1", "--context", "1",
               "--precision", "auto,fp32,bf16", "--device", "cpu", "--threads", "1"])
    out = capsys.readouterr().out
    assert rc == 0
    from lvm_base.hardware import resolve

    auto = resolve("cpu", "auto").precision
    assert "torch capability" in out and "device cpu" in out
    rows = [ln.split() for ln in out.splitlines() if ln.split()[:1] in ([f"auto->{auto}"], ["fp32"], ["bf16"])]
    assert [r[0] for r in rows] == [f"auto->{auto}", "fp32", "bf16"] and all(r[1] == "1" for r in rows)
    assert all(float(r[-1].rstrip("x")) > 0 for r in rows)
    assert out.count("% of roofline") == 3


def test_consume_shares_the_fused_weights_and_keeps_the_model_working(model):
    import copy

    m = copy.deepcopy(model)
    seq = torch.randint(0, K, (1, 20), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        before = m(seq).logits
    e = Engine(m, layout=LAYOUT, max_context=64, precision="fp32", consume=True)
    at = m.model.layers[0].self_attn
    wqkv = e.layers[0]["wqkv"]
    assert at.k_proj.weight.data_ptr() == wqkv.data_ptr() + at.q_proj.weight.numel() * wqkv.element_size()
    with torch.no_grad():
        assert torch.equal(m(seq).logits, before)  # nothing held twice, and the model still scores
    Engine(m, layout=LAYOUT, max_context=64, precision="bf16", consume=True)  # another dtype: freed
    assert at.q_proj.weight.numel() == 0
