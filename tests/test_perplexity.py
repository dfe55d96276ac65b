import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from lvm.cli import main
from lvm.model import ModelConfig
from lvm.eval.perplexity import target_nll
from lvm.tokens import TOKENS_PER_IMAGE, TokenLayout
from tiny import save_tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

K = 64
P = TOKENS_PER_IMAGE  # codes per image


def _model(ctx_images=4):
    torch.manual_seed(0)
    return ModelConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       codebook_size=K, max_position_embeddings=P * ctx_images).build().eval()


def _direct(model, inp, tgt):
    """Plain LlamaForCausalLM on the one unpadded sequence: mean NLL of the target tokens."""
    toks = torch.from_numpy(np.concatenate([inp.reshape(-1), tgt.reshape(-1)]))
    with torch.no_grad():
        logp = model(input_ids=toks[None]).logits[0].log_softmax(-1)
    start = max(inp.size, 1)
    nll = -logp[torch.arange(start - 1, len(toks) - 1), toks[start:]]
    return float(nll.sum()), len(nll)


def test_target_nll_equals_direct_computation_batched():
    model = _model()
    layout = TokenLayout(codebook_size=K, images_per_context=4)
    rng = np.random.default_rng(0)
    examples = [(rng.integers(0, K, (n_in, P)), rng.integers(0, K, (n_t, P)))
                for n_in, n_t in [(3, 1), (1, 1), (2, 2), (0, 1), (1, 3)]]
    total, count, per = target_nll(model, examples, layout, batch_size=3)
    for (inp, tgt), (s, c) in zip(examples, per):
        ds, dc = _direct(model, inp, tgt)
        assert c == dc and s == pytest.approx(ds, rel=1e-5)
    assert count == sum(c for _, c in per) == P * 8 - 1  # 8 target images, one without any input


def test_long_input_is_cropped_to_the_context():
    model = _model(ctx_images=2)
    layout = TokenLayout(codebook_size=K, images_per_context=2)
    rng = np.random.default_rng(1)
    inp, tgt = rng.integers(0, K, (5, P)), rng.integers(0, K, (1, P))
    _, _, per = target_nll(model, [(inp, tgt)], layout)
    assert per[0][0] == pytest.approx(_direct(model, inp[-1:], tgt)[0], rel=1e-5)


def test_cli_equals_direct_llama_on_the_same_tokens(tmp_path, capsys):
    from tokenizer import load_tokenizer

    save_tiny_tokenizer(tmp_path / "tok", K)
    model = _model()
    model.save_pretrained(tmp_path / "lvm")
    rng = np.random.default_rng(2)
    (tmp_path / "img").mkdir()
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(tmp_path / "img" / f"{i}.png")
    lines = [{"input": ["img/0.png", "img/1.png"], "target": ["img/2.png"]},
             {"input": ["img/3.png"], "target": ["img/4.png", "img/5.png"]},
             {"input": ["img/missing.png"], "target": ["img/0.png"]}]  # unreadable: skipped and counted
    jl = tmp_path / "eval.jsonl"
    jl.write_text("\n".join(json.dumps(x) for x in lines) + "\nnot json\n")
    rc = main(["eval", "perplexity", str(jl), "--model", str(tmp_path / "lvm"), "--tokenizer",
               str(tmp_path / "tok"), "--batch-size", "2", "--out", str(tmp_path / "res.json"),
               "--precision", "fp32", "--device", "cpu"])
    assert rc == 0
    res = json.loads((tmp_path / "res.json").read_text())
    assert res["examples"] == 2 and res["skipped"] == 2
    assert res["device"] == "cpu" and res["precision"] == "fp32"

    tok = load_tokenizer(tmp_path / "tok", precision="fp32")
    s_all = c_all = 0
    for ex in lines[:2]:
        codes = tok.encode_images([str(tmp_path / p) for p in ex["input"] + ex["target"]]).numpy()
        s, c = _direct(model, codes[:len(ex["input"])], codes[len(ex["input"]):])
        s_all, c_all = s_all + s, c_all + c
    assert res["tokens"] == c_all == 3 * P
    assert res["pooled_perplexity"] == pytest.approx(math.exp(s_all / c_all), rel=1e-5)
    out = capsys.readouterr().out
    assert f"perplexity {res['perplexity']:.4f}" in out and f"pooled {res['pooled_perplexity']:.4f}" in out


def _release_perplexity(model, inp, tgt):
    """The released eval_perplexity.py's formula, written out independently: log-softmax over the whole
    sequence, the one-hot target log-probs from the last input position on, exp(-mean) per example."""
    inp_t, tgt_t = torch.from_numpy(inp.reshape(1, -1)), torch.from_numpy(tgt.reshape(1, -1))
    all_ids = torch.cat([inp_t, tgt_t], 1)
    with torch.no_grad():
        log_probs = F.log_softmax(model(all_ids).logits.double(), -1)
    onehot = F.one_hot(tgt_t, log_probs.shape[-1]).double()
    target_lp = log_probs[:, inp_t.shape[1] - 1:-1]
    return float(torch.exp(-(target_lp * onehot).sum(-1).mean(-1))[0])


def test_headline_is_the_releases_mean_over_examples_and_pooled_is_beside_it(tmp_path, capsys):
    from tokenizer import load_tokenizer

    save_tiny_tokenizer(tmp_path / "tok", K)
    model = _model()
    with torch.no_grad():  # sharp output distributions: examples differ widely in perplexity
        model.lm_head.weight.mul_(40)
    model.save_pretrained(tmp_path / "lvm")
    rng = np.random.default_rng(5)
    (tmp_path / "data" / "img").mkdir(parents=True)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "data/img" / f"{i}.png")
    lines = [{"ctx": ["img/0.png", "img/1.png"], "gt": ["img/2.png"]},
             {"ctx": ["img/3.png"], "gt": ["img/4.png", "img/5.png"]},
             {"ctx": ["img/6.png", "img/7.png", "img/0.png"], "gt": ["img/1.png"]},
             {"ctx": ["img/5.png"], "gt": ["img/6.png"]}]  # cut by --max-examples 3
    jl = tmp_path / "eval.jsonl"  # paths are relative to --input-base-dir, not to the file's folder
    jl.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    rc = main(["eval", "perplexity", str(jl), "--model", str(tmp_path / "lvm"), "--tokenizer", str(tmp_path / "tok"),
               "--input-base-dir", str(tmp_path / "data"), "--json-input-key", "ctx", "--json-target-key", "gt",
               "--max-examples", "3", "--out", str(tmp_path / "res.json"), "--precision", "fp32", "--device", "cpu"])
    assert rc == 0
    res = json.loads((tmp_path / "res.json").read_text())
    tok = load_tokenizer(tmp_path / "tok", precision="fp32")
    per = []
    for ex in lines[:3]:
        codes = tok.encode_images([str(tmp_path / "data" / p) for p in ex["ctx"] + ex["gt"]]).numpy()
        per.append(_release_perplexity(model, codes[:len(ex["ctx"])], codes[len(ex["ctx"]):]))
    assert res["examples"] == 3 and max(per) > 1.5 * min(per)  # the examples really differ
    assert res["perplexity"] == pytest.approx(float(np.mean(per)), rel=1e-5)
    assert res["pooled_perplexity"] < res["perplexity"] * 0.97  # several percent apart, pooled below (Jensen)
    out = capsys.readouterr().out
    assert f"perplexity {res['perplexity']:.4f}" in out and f"pooled {res['pooled_perplexity']:.4f}" in out
    print(f"per example {[round(p, 3) for p in per]}: release formula {np.mean(per):.6f}, lvm "
          f"{res['perplexity']:.6f}, pooled {res['pooled_perplexity']:.6f}")


@pytest.mark.parametrize("precision", ["bf16", "auto"])
def test_half_precision_nll_is_close_to_fp32(precision):
    model = _model()
    layout = TokenLayout(codebook_size=K, images_per_context=4)
    rng = np.random.default_rng(3)
    examples = [(rng.integers(0, K, (2, P)), rng.integers(0, K, (1, P)))]
    ref, n, _ = target_nll(model, examples, layout)
    half, n2, _ = target_nll(model, examples, layout, precision=precision)
    assert n == n2 and half == pytest.approx(ref, rel=2e-2)
