import numpy as np
import pytest
import torch
from PIL import Image

from lvm_base.errors import ImageLoadError, InputError
from lvm_base.image_io import (load_image, load_image_tensor, make_grid, pil_to_tensor, resize_square,
                                save_png, tensor_to_pil)


def test_corrupt_and_missing_files_raise_one_error_type(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(ImageLoadError) as e:
        load_image(bad)
    assert str(bad) in str(e.value) and "\n" not in str(e.value)
    # Truncated: a valid header with most of the data cut off.
    good = tmp_path / "good.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good)
    trunc = tmp_path / "trunc.jpg"
    trunc.write_bytes(good.read_bytes()[:300])
    with pytest.raises(ImageLoadError, match="trunc.jpg"):
        load_image(trunc)
    with pytest.raises(ImageLoadError, match="no such file"):
        load_image(tmp_path / "missing.png")
    assert issubclass(ImageLoadError, InputError)


def test_16bit_png_keeps_its_range(tmp_path):
    arr = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(arr).save(path)
    assert Image.open(path).mode.startswith("I")
    img = load_image(path)
    out = np.asarray(img)
    assert img.mode == "RGB" and out.shape == (32, 32, 3)
    # A naive convert("RGB") clips everything above 255 to white; we scale instead.
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255
    assert abs(int(out[16, 0, 0]) - 128) <= 2


def test_rgba_png_is_composited_on_white(tmp_path):
    arr = np.zeros((8, 8, 4), dtype=np.uint8)
    arr[..., 0] = 200  # red channel, fully transparent on the left half
    arr[:, 4:, 3] = 255
    path = tmp_path / "rgba.png"
    Image.fromarray(arr, mode="RGBA").save(path)
    out = np.asarray(load_image(path))
    assert out[0, 0].tolist() == [255, 255, 255]
    assert out[0, 7].tolist() == [200, 0, 0]


def test_exif_rotated_jpeg_is_upright(tmp_path):
    # Stored 40 wide x 20 high with the left half red; orientation 6 means "rotate 90 cw to view".
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[:, :20] = [255, 0, 0]
    img = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif, quality=95)
    out = load_image(path)
    assert out.size == (20, 40)  # width, height after applying the orientation
    a = np.asarray(out).astype(int)
    assert a[5, 10, 0] > 200 and a[5, 10, 1] < 60  # the red half is now on top
    assert a[35, 10, 0] < 60


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "1", "LA"])
def test_other_modes_become_rgb(tmp_path, mode):
    img = Image.new("RGB", (10, 6), (10, 120, 250)).convert(mode)
    path = tmp_path / f"img_{mode}.{'jpg' if mode == 'CMYK' else 'png'}"
    img.save(path)
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (10, 6)


def test_resize_modes():
    img = Image.new("RGB", (200, 100))
    img.paste((255, 0, 0), (0, 0, 50, 100))  # left quarter red: cropped away by center crop
    crop = resize_square(img, 64, "crop")
    squash = resize_square(img, 64, "squash")
    assert crop.size == squash.size == (64, 64)
    assert np.asarray(crop)[:, 0, 0].max() < 20
    assert np.asarray(squash)[:, 0, 0].min() > 200
    with pytest.raises(ValueError):
        resize_square(img, 64, "stretch")


@pytest.mark.parametrize("value_range", [(-1.0, 1.0), (0.0, 1.0)])
def test_tensor_round_trip(tmp_path, value_range):
    arr = np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    path = tmp_path / "x.png"
    Image.fromarray(arr).save(path)
    t = load_image_tensor(path, 32, value_range)
    assert t.shape == (3, 32, 32) and t.dtype == torch.float32
    assert t.min() >= value_range[0] and t.max() <= value_range[1]
    exact = pil_to_tensor(Image.fromarray(arr), value_range)
    back = np.asarray(tensor_to_pil(exact, value_range))
    assert (back == arr).all()
    assert np.asarray(tensor_to_pil(exact * 5, value_range)).dtype == np.uint8  # clamped, no wrap-around


def test_grid_png(tmp_path):
    a = Image.new("RGB", (16, 16), (255, 0, 0))
    grid = make_grid([[a, a], [a, None]], labels=["prompt", "pred"], col_labels=["1", "2"])
    out = save_png(grid, tmp_path / "sub" / "grid.png")
    assert Image.open(out).size == grid.size and grid.size[0] > 2 * 16
    assert not list((tmp_path / "sub").glob(".*tmp*"))
