import numpy as np
import pytest
import torch

from lvm.tokens import DEFAULT_LAYOUT, TokenLayout
from tokenizer.common.errors import InputError


def test_default_layout_matches_reference():
    L = DEFAULT_LAYOUT
    assert (L.codebook_size, L.pad_id, L.vocab_size) == (8192, 8192, 8292)
    assert (L.tokens_per_image, L.images_per_context, L.context_length) == (256, 16, 4096)
    assert TokenLayout.from_vocab_size(8292) == L
    assert TokenLayout(codebook_size=1024).vocab_size == 1124


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_flatten_positions_are_image_aligned(kind):
    L = TokenLayout(codebook_size=64)
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 64, size=(16, 16)) for _ in range(3)]
    if kind == "torch":
        imgs = [torch.from_numpy(i) for i in imgs]
    tokens, pos = L.flatten(imgs)
    assert type(tokens) is type(imgs[0]) and tokens.shape == (768,)
    for i in range(3):
        s = L.image_start(i)
        assert int(pos[s]) == 256 * i and int(pos[s + 255]) == 256 * i + 255
        assert (np.asarray(tokens[s:s + 256]) == np.asarray(imgs[i]).reshape(-1)).all()
    back = L.unflatten(tokens)
    assert back.shape == (3, 256)
    assert (np.asarray(back[1]) == np.asarray(imgs[1]).reshape(-1)).all()


def test_flatten_accepts_stacked_array():
    L = TokenLayout(codebook_size=64)
    arr = np.arange(2 * 256).reshape(2, 256) % 64
    tokens, pos = L.flatten(arr)
    assert tokens.dtype == np.int64 and (pos == np.arange(512)).all()


def test_flatten_rejects_bad_sequences():
    L = TokenLayout(codebook_size=64)
    with pytest.raises(InputError, match="image codes"):
        L.flatten([np.full(256, 64)])  # PAD is not an image code
    with pytest.raises(InputError, match="image codes"):
        L.flatten([np.full(256, -1)])
    with pytest.raises(InputError, match="expected 256"):
        L.flatten([np.zeros(255, dtype=int)])
    with pytest.raises(InputError, match="at most 16"):
        L.flatten([np.zeros(256, dtype=int)] * 17)
    with pytest.raises(InputError, match="at least one"):
        L.flatten([])


def test_is_image_code_excludes_specials():
    L = TokenLayout(codebook_size=8192)
    ids = torch.tensor([0, 8191, 8192, 8291, -1])
    assert L.is_image_code(ids).tolist() == [True, True, False, False, False]


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
