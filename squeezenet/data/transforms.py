"""Image decoding and the two preprocessing presets, on Pillow, NumPy and PyTorch (no torchvision).

* ``caffe``: BGR, 0-255, mean (104, 117, 123) subtracted, squash to 256x256, center crop 227.
* ``torchvision``: RGB, short side to 256, center crop 224, /255, ImageNet mean/std.

``load_image`` accepts any mode Pillow reads (grayscale, RGBA, palette, CMYK, 16-bit) and
applies the EXIF orientation, so every image arrives as 8-bit RGB the right way up.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from ..errors import SqueezeNetError

MAX_PIXELS = 64_000_000  # larger images are refused (decompression bombs)


@dataclass(frozen=True)
class Preprocess:
    """How a network wants its input; callable on a PIL image, returns a CHW float32 tensor.

    ``pixels`` and ``normalize`` are its two halves: per image (uint8) and per batch (float).
    """

    name: str
    resize: int  # target of the resize step (square side or short side)
    crop: int  # center crop side
    square_resize: bool  # True: squash to resize x resize; False: short side to resize
    bgr: bool  # channel order the network expects
    scale: float  # multiply 0-255 pixel values by this before normalising
    mean: tuple[float, float, float]  # in the network's channel order and scale
    std: tuple[float, float, float]

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.normalize(self.pixels(image)[None])[0]

    def pixels(self, image: Image.Image) -> torch.Tensor:
        """The resized, center-cropped RGB pixels as they are: a uint8 (crop, crop, 3) tensor."""
        target = resized_size(image.size, self.resize, square=self.square_resize)
        if target[0] > image.width and target[1] > image.height and min(target) >= self.crop:
            x = enlarge(image, target)
            top, left = crop_origin(target, self.crop)
            return x[top : top + self.crop, left : left + self.crop].contiguous()
        image = center_crop(resize(image, self.resize, square=self.square_resize), self.crop)
        return torch.from_numpy(np.array(image))  # one copy: Pillow's buffer is read-only

    def normalize(
        self, batch: torch.Tensor, memory_format: torch.memory_format = torch.contiguous_format
    ) -> torch.Tensor:
        """uint8 (N, H, W, 3) pixels -> the network's float32 (N, 3, H, W) input, on the pixels'
        device, contiguous in ``memory_format``.

        Channel order, scale, mean and std as the preset says; one pass over a whole batch.
        Training calls it where the network runs, on its workers' bytes (channels_last there).
        """
        pixels = batch.permute(0, 3, 1, 2)
        x = torch.empty(
            pixels.shape, dtype=torch.float32, device=pixels.device, memory_format=memory_format
        )
        for channel, source in enumerate((2, 1, 0) if self.bgr else (0, 1, 2)):
            x[:, channel] = pixels[:, source]  # to float in the copy (a flip would copy again)
        mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device)[:, None, None]
        std = torch.tensor(self.std, dtype=torch.float32, device=x.device)[:, None, None]
        return x.mul_(self.scale).sub_(mean).div_(std)

    def with_size(self, crop: int) -> Preprocess:
        """The same preset at another input size (resize scaled by the same 256/224 ratio)."""
        return dataclasses.replace(self, crop=crop, resize=round(crop * self.resize / self.crop))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Preprocess:
        fields = {f.name for f in dataclasses.fields(cls)}
        clean = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in fields}
        return cls(**clean)


PRESETS = {
    "caffe": Preprocess(
        "caffe", 256, 227, True, True, 1.0, (104.0, 117.0, 123.0), (1.0, 1.0, 1.0)
    ),
    "torchvision": Preprocess(
        "torchvision", 256, 224, False, False, 1 / 255,
        (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
    ),
}  # fmt: skip


def get_preset(name: str) -> Preprocess:
    if name not in PRESETS:
        raise SqueezeNetError(
            f"unknown preprocessing preset {name!r}; choose from {sorted(PRESETS)}"
        )
    return PRESETS[name]


def load_image(
    path: str | Path, draft_size: int | None = None, max_pixels: int | None = None
) -> Image.Image:
    """Decode ``path`` to an 8-bit RGB image, EXIF-rotated; raise SqueezeNetError if unreadable.

    ``path`` may also be a binary file object; images over ``max_pixels`` (default
    ``MAX_PIXELS``) are refused from the size in their header, before any pixel is decoded.
    Safe to call from several threads (it changes no warning filter). Pillow itself refuses
    images over twice its ``Image.MAX_IMAGE_PIXELS`` (and warns above it), whatever the limit.

    ``draft_size`` lets JPEG decoding scale down by 1/2, 1/4 or 1/8 while staying at least
    that size, which makes large photos several times cheaper to decode.
    """
    max_pixels = MAX_PIXELS if max_pixels is None else max_pixels
    try:
        with Image.open(path) as image:  # reads the header only
            if image.width * image.height > max_pixels:
                raise SqueezeNetError(
                    f"{path}: image of {image.width}x{image.height} pixels is larger than "
                    f"the {max_pixels:,}-pixel limit"
                )
            if draft_size and image.format == "JPEG":
                image.draft("RGB", (draft_size, draft_size))
            image = ImageOps.exif_transpose(image)
            return to_rgb(image)
    except SqueezeNetError:
        raise
    except FileNotFoundError:
        raise SqueezeNetError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise SqueezeNetError(f"{path}: is a directory, not an image") from None
    except Exception as e:  # damaged files, DecompressionBombError (and its warning as an error)
        raise SqueezeNetError(f"{path}: cannot decode image ({type(e).__name__}: {e})") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparency is composited onto white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        array = np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        image = Image.fromarray(array, "L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    if image.mode != "RGB":
        image = image.convert("RGB")
    image.load()
    return image


def resized_size(size: tuple[int, int], target: int, *, square: bool) -> tuple[int, int]:
    """(width, height) after ``resize``: ``target`` squared, or the short side made ``target``."""
    if square:
        return (target, target)
    w, h = size
    short = min(w, h)
    scaled = (round(w * target / short), round(h * target / short))
    return (target if w == short else scaled[0], target if h == short else scaled[1])


def resize(image: Image.Image, size: int, *, square: bool) -> Image.Image:
    """Bilinear resize, either squashed to ``size`` x ``size`` or with the short side = size."""
    target = resized_size(image.size, size, square=square)
    if image.size == target:
        return image
    return image.resize(target, Image.Resampling.BILINEAR)


def crop_source(image: Image.Image, size: int) -> Image.Image:
    """What training crops of ``size`` are taken from: the whole image as decoded (JPEG
    draft to at least ``size``), its short side brought down to ``2 * size`` if longer.

    Whole and sharp, because a random-resized crop may take any part of the photo at any scale:
    a center square at validation's resize side (146 px for 128) would cut the sides off
    non-square photos and make crops enlarge a lower-resolution copy (up to 1.75x), which cost
    squeezenet1_1_bn 2.5 points of held-out top-1 on Imagenette after 10 epochs. The
    ``2 * size`` bound keeps large photos small in the training cache.
    """
    return resize(image, 2 * size, square=False) if min(image.size) > 2 * size else image


def enlarge(image: Image.Image, size: tuple[int, int]) -> torch.Tensor:
    """An RGB image enlarged to ``size`` (w, h) with Pillow's bilinear filter, as uint8 HWC.

    PyTorch's uint8 kernel (antialiased bilinear, the same triangle filter) runs about 2.4x
    faster than Pillow's. When enlarging it gives Pillow's pixels (bit for bit at 224 or 227 ->
    256, the datasets' sizes; at most one level apart in under 1% of pixels elsewhere), which
    decides top-1 nowhere measured; shrinking, where they differ more often, stays on Pillow.
    """
    chw = torch.from_numpy(np.array(image)).permute(2, 0, 1)  # HWC memory: channels_last
    out = torch.nn.functional.interpolate(
        chw[None], size=size[::-1], mode="bilinear", antialias=True, align_corners=False
    )
    return out[0].permute(1, 2, 0)


def crop_origin(size: tuple[int, int], crop: int) -> tuple[int, int]:
    """(top, left) of the central ``crop`` square of an image of ``size`` (w, h)."""
    return int(round((size[1] - crop) / 2.0)), int(round((size[0] - crop) / 2.0))


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """Crop the central ``size`` x ``size`` square (pads with black if the image is smaller)."""
    w, h = image.size
    if w < size or h < size:
        padded = Image.new("RGB", (max(w, size), max(h, size)))
        padded.paste(image, ((padded.width - w) // 2, (padded.height - h) // 2))
        image, w, h = padded, padded.width, padded.height
    top, left = crop_origin((w, h), size)
    return image.crop((left, top, left + size, top + size))
