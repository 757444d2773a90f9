"""Preprocessing on Pillow/NumPy: presets, image modes, EXIF orientation, bad files."""

import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from conftest import shared_path
from PIL import Image

from squeezenet.data.transforms import PRESETS, center_crop, load_image, resize
from squeezenet.errors import SqueezeNetError


def gradient(w=300, h=200) -> Image.Image:
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None, None]
    rgb = np.concatenate([np.broadcast_to(x, (h, w, 1)), np.broadcast_to(y, (h, w, 1)),
                          np.full((h, w, 1), 40.0)], axis=2)  # fmt: skip
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def test_caffe_preset_is_bgr_mean_subtracted_227():
    image = Image.new("RGB", (500, 300), (10, 20, 30))
    x = PRESETS["caffe"](image)
    assert x.shape == (3, 227, 227)
    np.testing.assert_allclose(x[:, 100, 100].numpy(), [30 - 104, 20 - 117, 10 - 123])


def test_torchvision_preset_short_side_then_crop_224():
    image = Image.new("RGB", (500, 300), (255, 0, 128))
    x = PRESETS["torchvision"](image)
    assert x.shape == (3, 224, 224)
    expected = (np.array([1.0, 0.0, 128 / 255]) - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    np.testing.assert_allclose(x[:, 5, 5].numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize("preset", ["caffe", "torchvision"])
def test_pixels_then_normalize_is_the_float_formula_bit_for_bit(preset):
    """The uint8 half per image and the float half per batch give exactly the old per-image
    formula (what every accuracy in the project was measured with)."""
    p = PRESETS[preset]
    photos = [
        load_image(shared_path(f"data/photos/{n}"), p.resize) for n in ("cat.jpg", "chelsea.png")
    ]

    def formula(image: Image.Image) -> torch.Tensor:
        array = np.asarray(center_crop(resize(image, p.resize, square=p.square_resize), p.crop))
        array = array.astype(np.float32) * p.scale
        array = array[:, :, ::-1] if p.bgr else array
        array = (array - np.asarray(p.mean, np.float32)) / np.asarray(p.std, np.float32)
        return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))

    pixels = [p.pixels(image) for image in photos]
    assert all(x.dtype == torch.uint8 and x.shape == (p.crop, p.crop, 3) for x in pixels)
    batch = p.normalize(torch.stack(pixels))
    assert batch.dtype == torch.float32 and batch.is_contiguous()
    expected = [formula(image) for image in photos]
    assert not torch.equal(expected[0], expected[1])
    for i, image in enumerate(photos):
        assert torch.equal(p(image), expected[i]) and torch.equal(batch[i], expected[i])


@pytest.mark.parametrize("preset", ["caffe", "torchvision"])
def test_enlarging_on_pytorch_gives_pillows_pixels(preset):
    """Images smaller than the resize target (the datasets' 224 and 227 px) are enlarged by
    PyTorch's uint8 kernel: the pixels of Pillow's bilinear resize and crop, bit for bit."""
    p = PRESETS[preset]
    val = sorted((shared_path("data/imagenet-val") / "images").iterdir())[:20]
    train = sorted((shared_path("data/imagenette/train") / "n03888257").iterdir())[:10]
    for f in val + train:
        image = load_image(f, p.resize)
        assert image.width < p.resize and image.height < p.resize
        expected = np.asarray(center_crop(resize(image, p.resize, square=p.square_resize), p.crop))
        np.testing.assert_array_equal(p.pixels(image).numpy(), expected)


def test_resize_and_crop_geometry():
    image = gradient(300, 200)
    assert resize(image, 256, square=False).size == (384, 256)
    assert resize(image, 256, square=True).size == (256, 256)
    crop = center_crop(image, 100)
    # The crop is centred: its left column is column 100 of the source.
    np.testing.assert_array_equal(np.asarray(crop)[:, 0], np.asarray(image)[50:150, 100])
    assert center_crop(Image.new("RGB", (50, 40)), 64).size == (64, 64)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "1", "I", "F"])
def test_every_mode_becomes_rgb(tmp_path, mode):
    image = gradient().convert("RGBA" if mode in ("RGBA", "LA") else "RGB")
    if mode == "I;16":
        image = Image.fromarray(np.asarray(gradient().convert("L"), np.uint16) * 257)
        assert image.mode == "I;16"
    elif mode in ("I", "F"):
        image = gradient().convert("L").convert(mode)
    else:
        image = image.convert(mode)
    path = tmp_path / ("x.tiff" if mode in ("CMYK", "I;16", "I", "F") else "x.png")
    image.save(path)
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (300, 200)
    if mode in ("L", "I;16", "I", "F"):  # gray levels survive (16-bit scaled down to 8-bit)
        expected = np.asarray(gradient().convert("L"), np.int16)
        assert np.abs(np.asarray(out, np.int16)[:, :, 0] - expected).max() <= 1


def test_transparency_is_composited_on_white(tmp_path):
    image = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    image.save(tmp_path / "t.png")
    assert load_image(tmp_path / "t.png").getpixel((5, 5)) == (255, 255, 255)


def test_exif_orientation_is_applied(tmp_path):
    image = gradient(300, 200)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    image.save(tmp_path / "r.jpg", exif=exif, quality=95)
    assert load_image(tmp_path / "r.jpg").size == (200, 300)


def test_jpeg_draft_mode_decodes_smaller_but_not_below_target(tmp_path):
    gradient(1200, 800).save(tmp_path / "big.jpg")
    small = load_image(tmp_path / "big.jpg", draft_size=256)
    assert min(small.size) >= 200 and small.size[0] < 1200


@pytest.mark.parametrize(
    "content,message",
    [(b"", "cannot decode"), (b"not an image at all", "cannot decode"),
     (b"\xff\xd8\xff\xe0" + b"\x00" * 40, "cannot decode")],
)  # fmt: skip
def test_bad_files_give_one_line_errors(tmp_path, content, message):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(SqueezeNetError, match=message) as e:
        load_image(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_truncated_png_and_missing_file(tmp_path):
    gradient().save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(SqueezeNetError, match="cut.png"):
        load_image(tmp_path / "cut.png")
    with pytest.raises(SqueezeNetError, match="no such file"):
        load_image(tmp_path / "missing.png")


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    import squeezenet.data.transforms as t

    monkeypatch.setattr(t, "MAX_PIXELS", 1000)
    gradient().save(tmp_path / "big.png")
    with pytest.raises(SqueezeNetError, match="pixel limit"):
        load_image(tmp_path / "big.png")


def test_load_image_in_threads_leaves_the_warning_filters_alone(tmp_path):
    """serve decodes in threads: a warnings.catch_warnings() there would leak filters."""
    gradient().save(tmp_path / "g.png")
    before = list(warnings.filters)
    with ThreadPoolExecutor(8) as pool:
        sizes = set(pool.map(lambda _: load_image(tmp_path / "g.png").size, range(2000)))
    assert sizes == {(300, 200)} and warnings.filters == before
