"""Fuzzing the image loader (decode + preprocessing) with damaged real photos and bombs.

Every input must give a CHW tensor or a SqueezeNetError naming the file, in bounded time and
memory (see fuzz.py); images whose header claims more than the pixel limit are refused before
any pixel is decoded.
"""

from __future__ import annotations

import functools
import io
import struct
import warnings
from pathlib import Path

import pytest
from conftest import shared_path
from fuzz import FUZZ, check, damages, png, report, sweep
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from squeezenet.data.transforms import MAX_PIXELS, get_preset, load_image
from squeezenet.errors import SqueezeNetError

PREPROCESS = get_preset("torchvision")
FORMATS = ["GIF", "BMP", "TIFF", "PPM", "WEBP"]  # Pillow writes them all (WebP: libwebp, bundled)
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow on corrupt metadata


@functools.cache
def seeds() -> dict[str, bytes]:
    """Real photos as they are, and a crop of one in every other format Pillow writes."""
    photos = {
        name: shared_path(f"data/photos/{name}").read_bytes() for name in ("chelsea.png", "cat.jpg")
    }
    crop = Image.open(io.BytesIO(photos["chelsea.png"])).crop((150, 50, 250, 130))
    for fmt in FORMATS:
        out = io.BytesIO()
        crop.save(out, fmt)
        photos[f"crop.{fmt.lower()}"] = out.getvalue()
    return photos


@pytest.fixture(scope="module", autouse=True)
def outcome_report():
    yield
    report()


def classify_input(path: Path) -> None:
    image = load_image(path, draft_size=PREPROCESS.resize)
    assert PREPROCESS(image).shape == (3, 224, 224)


def try_image(folder: Path, name: str, data: bytes, kind: str) -> None:
    path = folder / name
    path.write_bytes(data)
    # no must_fail for truncations: a file cut in its trailer (e.g. GIF's last byte) is whole
    check("load_image", kind, lambda: classify_input(path), [name], must_fail=False)


SEED_NAMES = ["chelsea.png", "cat.jpg", *(f"crop.{fmt.lower()}" for fmt in FORMATS)]


@pytest.mark.parametrize("name", SEED_NAMES)
@settings(FUZZ, max_examples=200)
@given(data=st.data())
def test_loader_survives_random_damage(tmp_path_factory, name, data):
    seed = seeds()[name]
    damage = data.draw(damages(len(seed), head=1024), label="damage")
    folder = tmp_path_factory.getbasetemp()
    try_image(folder, name, damage.apply(seed), damage.kind)


@pytest.mark.parametrize("name", SEED_NAMES)
def test_loader_survives_truncation_and_bitflip_sweeps(tmp_path, name):
    seed = seeds()[name]
    for damage in sweep(len(seed), count=32):
        try_image(tmp_path, name, damage.apply(seed), f"{damage.kind}-sweep")


def jpeg_claiming(width: int, height: int) -> bytes:
    """cat.jpg with the size in its frame header replaced."""
    data = bytearray(shared_path("data/photos/cat.jpg").read_bytes())
    sof = next(i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] in (0xC0, 0xC2))
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def png_claiming(width: int, height: int) -> bytes:
    """A tiny valid-looking PNG whose header (with a correct CRC) claims width x height."""
    return png(width, height, rows=b"\0\0")


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("bomb.png", png(8_500, 8_500), "8500x8500 pixels is larger than the 64,000,000-pixel"),
        ("bigger.png", png(10_000, 10_000), "10000x10000 pixels is larger than the 64,000,000"),
        ("wide.png", png_claiming(2**31 - 1, 1), "cannot decode image"),
        ("huge.png", png_claiming(65_535, 65_535), "cannot decode image (DecompressionBombError"),
        ("zero.png", png_claiming(0, 0), "cannot decode image"),
        ("huge.jpg", jpeg_claiming(65_535, 65_535), "cannot decode image"),
        ("tall.jpg", jpeg_claiming(100, 65_535), "cannot decode image"),
        ("short.png", png(64, 64, rows=b"\0" * 10), "cannot decode image"),
        ("empty.png", b"", "cannot decode image"),
    ],
)
def test_bombs_and_absurd_sizes_are_refused(tmp_path, name, data, message):
    path = tmp_path / name
    path.write_bytes(data)
    error = check("load_image", "bomb/absurd size", lambda: classify_input(path), [name], True)
    assert error.startswith(f"{path}: ") and message in error, error


def test_pillow_bomb_warning_raised_as_an_error_is_a_squeezenet_error(tmp_path):
    """Where warnings are errors, the one Pillow raises inside Image.open ends as ours too."""
    path = tmp_path / "bigger.png"
    path.write_bytes(png(10_000, 10_000))
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(SqueezeNetError, match=r"bigger.png: cannot decode image \(Decompr"):
            load_image(path)


def test_bomb_within_the_limit_decodes_in_bounds(tmp_path):
    """Just under the limit: decoded (a 1-bit 63 Mpixel PNG) within the time and memory bounds."""
    side = int(MAX_PIXELS**0.5) - 100
    path = tmp_path / "big.png"
    path.write_bytes(png(side, side))
    check("load_image", "bomb/absurd size", lambda: classify_input(path), ["big.png"], False)


def test_pixel_limit_is_a_parameter(tmp_path):
    path = tmp_path / "chelsea.png"
    path.write_bytes(seeds()["chelsea.png"])
    assert load_image(path, max_pixels=451 * 300).size == (451, 300)
    with pytest.raises(SqueezeNetError, match="451x300 pixels is larger than the 135,299-pixel"):
        load_image(path, max_pixels=451 * 300 - 1)
