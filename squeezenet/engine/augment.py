"""Training augmentation on Pillow and NumPy: random-resized-crop and horizontal flip.

Every random choice comes from a NumPy generator seeded by (seed, epoch, image index), so an
image gets the same crop in a given epoch whatever the worker, the process count or a resume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..data.cache import PixelCache
from ..data.datasets import ImageDataset
from ..data.transforms import crop_source, load_image
from ..errors import SqueezeNetError


def random_resized_crop_box(
    width: int,
    height: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """A random (left, top, right, bottom) box covering ``scale`` of the area at aspect ``ratio``.

    Same rule as Inception/torchvision: ten tries, then the central crop at the nearest ratio.
    """
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            return left, top, left + w, top + h
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif aspect > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


@dataclass(frozen=True)
class TrainTransform:
    """Random-resized-crop to ``size``, then a flip with probability 1/2: uint8 (size, size, 3).

    The network's scaling (``Preprocess.normalize``) is applied per batch where the
    network runs: workers hand over bytes, a quarter of the float32 input.
    """

    size: int
    min_scale: float = 0.08

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> torch.Tensor:
        box = random_resized_crop_box(*image.size, rng, scale=(self.min_scale, 1.0))
        image = image.resize((self.size, self.size), Image.Resampling.BILINEAR, box=box)
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return torch.from_numpy(np.array(image))  # one copy: Pillow's buffer is read-only


class AugmentedDataset(Dataset):
    """Wraps a labelled ``ImageDataset``; indexed by ``(epoch, index)`` keys.

    Yields ``(pixels, label, index)``, or None for an image that cannot be decoded. With a
    ``cache`` the images come decoded from it (the same pixels, ``train_pixels``) instead of
    from their files.
    """

    def __init__(
        self,
        base: ImageDataset,
        transform: TrainTransform,
        seed: int,
        cache: PixelCache | None = None,
    ) -> None:
        self.base, self.transform, self.seed, self.cache = base, transform, seed, cache

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]):
        epoch, i = key
        if self.cache is not None:
            image = self.cache.image(i)
        else:
            try:
                size = self.transform.size
                image = crop_source(load_image(self.base.files[i], draft_size=size), size)
            except SqueezeNetError:
                image = None
        if image is None:
            return None
        rng = np.random.default_rng((self.seed, epoch, i))
        return self.transform(image, rng), self.base.labels[i], i
