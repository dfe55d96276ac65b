import numpy as np
import pytest
import torch

from lvm.model import ModelConfig
from lvm.train.packing import (IGNORE, Packer, collate_rows, model_inputs, pack_sequences, register_packed_attention,
                         row_arrays)

pytestmark = pytest.mark.usefixtures("one_thread")

TPI = 16  # tokens per image in these tests (the contract's 256, scaled down to keep them fast)


def _tiny_model(K=64, ctx=8 * 256):
    torch.manual_seed(0)
    cfg = ModelConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      codebook_size=K, max_position_embeddings=ctx)
    return cfg.build().eval()


def test_row_layout_positions_targets_and_segments():
    a = np.arange(3 * TPI) % 50
    b = np.arange(TPI) % 50 + 1
    r = row_arrays([a, b], 6 * TPI, pad_id=64, tokens_per_image=TPI)
    n = len(a) + len(b)
    assert (r["position_ids"][:len(a)] == np.arange(len(a))).all()
    assert (r["position_ids"][len(a):n] == np.arange(len(b))).all()  # restart, image-aligned
    assert (r["input_ids"][n:] == 64).all() and (r["targets"][n:] == IGNORE).all()
    assert (r["targets"][:len(a) - 1] == a[1:]).all()
    assert r["targets"][len(a) - 1] == IGNORE  # no loss across the boundary
    assert r["targets"][n - 1] == IGNORE
    assert set(r["segment_ids"][n:]) == {2}
    # next-image tokens: the last image of `a` (b has one image: nothing scored)
    assert r["last_image"].sum() == TPI and r["last_image"][len(a) - TPI - 1] and not r["last_image"][len(a) - 1]


@pytest.mark.parametrize("mode", ["mask", "varlen"])
def test_packed_logits_equal_each_sequence_alone_fp32(mode):
    model = _tiny_model()
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, 64, (n, 256)) for n in (3, 1, 2, 1)]
    rows, frac = pack_sequences(seqs, length=8 * 256, pad_id=64, open_rows=1)
    assert len(rows) == 1 and abs(frac - 1 / 8) < 1e-9
    batch = collate_rows(rows)
    with torch.no_grad():
        if mode == "varlen":
            model.set_attn_implementation(register_packed_attention())
        packed = model(**model_inputs(batch, mode)).logits[0]
        model.set_attn_implementation("sdpa")
        at = 0
        for s in seqs:
            toks = torch.from_numpy(s.reshape(-1))
            alone = model(input_ids=toks[None]).logits[0]
            got = packed[at:at + len(toks)]
            assert torch.allclose(got, alone, atol=1e-5, rtol=1e-5), (got - alone).abs().max()
            at += len(toks)
        assert torch.isfinite(packed).all()  # the padding rows are not NaN either


def test_packer_keeps_whole_sequences_and_low_padding():
    rng = np.random.default_rng(1)
    # demo-like mix: singles, pairs, 4-tuples, 8- and 16-image sequences
    lens = rng.choice([1, 2, 4, 8, 16, 16, 16], size=400)
    seqs = [rng.integers(0, 64, (int(n), TPI)) for n in lens]
    p = Packer(16 * TPI, pad_id=64, tokens_per_image=TPI)
    rows = [r for s in seqs for r in p.add(s)] + p.flush()
    assert p.padded_fraction < 0.10
    real = sum(int((r["input_ids"] != 64).sum()) for r in rows)
    assert real == sum(s.size for s in seqs)  # nothing lost, nothing duplicated
    for r in rows:  # every sequence starts at position 0 and is image-aligned
        starts = np.flatnonzero(r["position_ids"] == 0)
        assert (np.diff(np.append(starts, len(r["position_ids"]))) % TPI == 0).all()


def test_long_sequences_are_split_into_contexts():
    seq = np.arange(10 * TPI).reshape(10, TPI) % 60
    rows, _ = pack_sequences([seq], length=4 * TPI, pad_id=64, tokens_per_image=TPI)
    got = np.concatenate([r["input_ids"][r["input_ids"] != 64] for r in rows])
    assert sorted(got.tolist()) == sorted(seq.reshape(-1).tolist())
    assert all(r["position_ids"][0] == 0 for r in rows)
