import numpy as np
import pytest
import torch

from lvm.tokens import DEFAULT_LAYOUT, TokenLayout
from lvm_base.errors import InputError


def test_default_layout_matches_reference():
    L = DEFAULT_LAYOUT
    assert (L.codebook_size, L.pad_id, L.vocab_size) == (8192, 8192, 8292)
    assert (L.tokens_per_image, L.images_per_context, L.context_length) == (256, 16, 4096)
    assert TokenLayout.from_vocab_size(8292) == L
    assert TokenLayout(codebook_size=1024).vocab_size == 1124


def test_is_image_code_excludes_specials():
    L = TokenLayout(codebook_size=8192)
    ids = torch.tensor([0, 8191, 8192, 8291, -1])
    assert L.is_image_code(ids).tolist() == [True, True, False, False, False]
    assert L.is_image_code(ids.numpy()).tolist() == [True, True, False, False, False]


def test_check_codes_names_what_is_wrong():
    L = TokenLayout(codebook_size=64)
    assert L.check_codes(np.zeros((2, 256), dtype=int)).shape == (2, 256)
    with pytest.raises(InputError, match=r"prompt: values must be image codes in \[0, 63\], found range \[0, 64\]"):
        L.check_codes(np.array([0, 64]), "prompt")  # PAD is not an image code
    with pytest.raises(InputError, match="found range"):
        L.check_codes(torch.tensor([-1, 3]))
    with pytest.raises(InputError, match="whole number"):
        L.n_images(300)


def test_model_defaults_follow_the_contract():
    from lvm.model import ModelConfig

    c = ModelConfig()
    assert (c.codebook_size, c.max_position_embeddings) == (DEFAULT_LAYOUT.codebook_size, DEFAULT_LAYOUT.context_length)
    assert c.layout == DEFAULT_LAYOUT


def test_keep_last_images_crops_whole_images():
    L = DEFAULT_LAYOUT
    tokens = torch.arange(16 * 256) % 8192
    kept, dropped = L.keep_last_images(tokens)
    assert dropped == 1 and kept.shape[-1] == 15 * 256
    assert int(kept[0]) == 256  # starts at the second image
    batch = tokens.reshape(1, -1).repeat(2, 1)
    kept_b, dropped_b = L.keep_last_images(batch, max_images=4)
    assert dropped_b == 12 and kept_b.shape == (2, 4 * 256)
    short, none_dropped = L.keep_last_images(tokens[:512])
    assert none_dropped == 0 and short.shape[-1] == 512
    with pytest.raises(InputError, match="whole number"):
        L.keep_last_images(tokens[:300])
