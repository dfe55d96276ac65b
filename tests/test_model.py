"""ModelConfig's grid priors: binary rope, heads that start out looking at the earlier images' next grid
cell, and checkpoints that stay plain HF Llama directories."""

import logging
import warnings

import pytest
import torch
import torch.nn.functional as F

from lvm.model import ModelConfig
from lvm.model import model_config_from_hf

pytestmark = pytest.mark.usefixtures("one_thread")

TPI = 256


def _grid_cfg(**kw):
    base = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                codebook_size=64, max_position_embeddings=4 * TPI, grid_rope=True, attention_bias=True,
                grid_heads=2)
    return ModelConfig(**{**base, **kw})


def test_grid_rope_periods_are_binary():
    m = _grid_cfg(grid_heads=0).build()
    periods = 2 * torch.pi / m.model.rotary_emb.inv_freq.double()
    assert torch.allclose(periods[:9], torch.tensor([2.0 ** (i + 1) for i in range(9)], dtype=torch.double))


def test_grid_heads_look_at_next_cell_of_earlier_images():
    torch.manual_seed(0)
    m = _grid_cfg(num_hidden_layers=2).build().eval()
    m.config._attn_implementation = "eager"
    ids = torch.randint(0, 64, (1, 4 * TPI))
    with torch.no_grad():
        att = m(input_ids=ids, output_attentions=True).attentions
    q = torch.arange(2 * TPI, 4 * TPI)  # queries from the third image on: both heads' targets exist
    for layer in att:  # layer 1 sees layer 0's output: the look-up does not depend on content
        for head, back in ((0, 1), (1, 2)):
            w = layer[0, head, q, q - (back * TPI - 1)]
            assert w.min() > 0.9, (head, w.min())


def test_grid_heads_copy_across_an_image_where_plain_init_cannot():
    """Rows [a, a] of random codes: the second half is a copy 256 tokens back. The grid-initialised model
    learns it in a few dozen steps; the plain one sits on its plateau (ln K) far longer."""
    K = 64

    def copy_loss(cfg, steps=40):
        torch.manual_seed(0)
        m = cfg.build()
        m.config._attn_implementation = "sdpa"
        opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
        g = torch.Generator().manual_seed(1)
        for _ in range(steps):
            a = torch.randint(0, K, (4, TPI), generator=g)
            ids = torch.cat([a, a], 1)
            logits = m(input_ids=ids).logits
            loss = F.cross_entropy(logits[:, TPI - 1:-1].reshape(-1, logits.shape[-1]), ids[:, TPI:].reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
        return loss.item()

    grid = copy_loss(_grid_cfg(grid_heads=1))
    plain = copy_loss(_grid_cfg(grid_rope=False, attention_bias=False, grid_heads=0))
    assert grid < 1.0 and plain > 0.9 * torch.log(torch.tensor(float(K))).item(), (grid, plain)


def test_grid_copy_predicts_the_previous_images_cell_at_init():
    """grid_copy: the untrained model's argmax is the token at the same cell one image back (random codes,
    so nothing but the circuit can produce it); without it, chance."""
    torch.manual_seed(0)
    ids = torch.randint(0, 64, (1, 3 * TPI))

    def agreement(cfg):
        with torch.no_grad():
            pred = cfg.build().eval()(input_ids=ids).logits[0, TPI - 1:-1].argmax(-1)
        return (pred == ids[0, :-TPI]).float().mean().item()

    assert agreement(_grid_cfg(grid_copy=0.5)) > 0.95
    assert agreement(_grid_cfg()) < 0.1


def test_grid_checkpoint_is_plain_hf_and_round_trips(tmp_path):
    from transformers import LlamaForCausalLM

    from lvm.model import save_hf

    cfg = _grid_cfg()
    m = cfg.build()
    save_hf(m, tmp_path)
    back = LlamaForCausalLM.from_pretrained(tmp_path)  # plain HF (which warns about grid rope's factor 1/pi)
    assert torch.equal(back.model.rotary_emb.inv_freq, m.model.rotary_emb.inv_freq)
    assert torch.equal(back.model.layers[1].self_attn.q_proj.bias, m.model.layers[1].self_attn.q_proj.bias)
    again = model_config_from_hf(back.config)
    assert again.grid_rope and again.attention_bias and again.grid_heads == 0  # init-time only
    plain = model_config_from_hf(_grid_cfg(grid_rope=False, attention_bias=False, grid_heads=0).to_hf())
    assert not plain.grid_rope and not plain.attention_bias and plain.rope_theta == 10000.0


def test_no_grid_rope_warning_reaches_the_user(tmp_path, capfd):
    """transformers warns that grid rope's linear factor 1/pi is below 1 wherever such a config is built, loaded
    or saved. lvm's ways to create, save and load one let nothing of it through, whatever its wording: no
    record at WARNING or above from transformers' loggers, nothing about rope on stderr; and transformers'
    verbosity is what it was afterwards."""
    from transformers.utils import logging as hf_logging

    from lvm.checkpoints import load_causal_lm
    from lvm.generate.engine import Engine
    from lvm.model import save_hf

    records = []
    catch = logging.Handler()
    catch.emit = records.append
    hf_root = logging.getLogger("transformers")
    was = hf_logging.get_verbosity()
    hf_logging.set_verbosity_warning()  # what a user sees by default, whatever the environment says
    hf_root.addHandler(catch)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cfg = _grid_cfg(grid_heads=0)
            cfg.to_hf()
            save_hf(cfg.build(), tmp_path / "m")
            load_causal_lm(tmp_path / "m", "cpu", "fp32")
            Engine.from_pretrained(tmp_path / "m", device="cpu", precision="fp32", kernels=False)
            assert hf_logging.get_verbosity() == logging.WARNING
    finally:
        hf_root.removeHandler(catch)
        hf_logging.set_verbosity(was)
    err = capfd.readouterr().err.lower()
    assert [r.getMessage() for r in records if r.levelno >= logging.WARNING] == []
    assert "rope" not in err and "factor" not in err, err
    assert not [w for w in caught if "rope" in str(w.message).lower() or "factor" in str(w.message).lower()]


@pytest.mark.parametrize("kw, msg", [
    (dict(grid_rope=False), "grid_heads needs"),
    (dict(attention_bias=False), "grid_heads needs"),
    (dict(grid_heads=3), "must be in 0..2"),
    (dict(hidden_size=32, num_attention_heads=2, grid_heads=0), "head_dim >= 24"),
    (dict(grid_heads=0, grid_copy=0.5), "grid_copy needs grid_heads"),
    (dict(rope_theta=500000.0), "rope_theta does not apply with grid_rope"),  # it would be ignored silently
])
def test_bad_grid_configs(kw, msg):
    with pytest.raises(ValueError, match=msg):
        _grid_cfg(**kw)
