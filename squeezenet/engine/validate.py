"""Validation during training: loss, top-1/top-5 and the confusion matrix of the held-out
images, sharded over the processes and summed."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.cache import CachedImages, CacheUnavailable, PixelCache, cached_pixels
from ..data.datasets import ImageDataset
from ..inference.pipeline import run as run_inference
from .checks import warn
from .config import Setup, micro_batch_limit
from .distributed import sum_over_processes, val_shard
from .loading import without_cache

MAX_VALIDATIONS = 10  # per run: more epochs than this are validated every k-th epoch
VAL_KEYS = ("val_loss", "val_top1", "val_top5", "val_n", "val_skipped")


def validates(epoch: int, epochs: int) -> bool:
    """Validation after every epoch, or every k-th when there are more than
    ``MAX_VALIDATIONS`` (short epochs of a small folder), and always after the last."""
    every = math.ceil(epochs / MAX_VALIDATIONS)
    return epoch % every == 0 or epoch == epochs


class Validation:
    """The validation of one run; with the cache, its center crops are decoded once."""

    def __init__(self, setup: Setup, workers: int, memory_format: torch.memory_format) -> None:
        self.setup, self.workers, self.memory_format = setup, workers, memory_format
        self.cache: PixelCache | None = None  # found or built on the first validation
        self.use_cache = bool(setup.cfg.cache)  # False once the disk has no room for it

    def __call__(self, model: nn.Module) -> tuple[dict, np.ndarray]:
        """Metrics (``VAL_KEYS``) and the confusion matrix of ``model``."""
        setup, procs, n_cls = self.setup, self.setup.procs, self.setup.cfg.num_classes
        shard = val_shard(setup.val, procs)
        images, normalize, workers = shard, None, setup.cfg.workers
        cached = self._cached(shard) if self.use_cache else None
        if cached is not None:  # the center crops decoded once; each validation costs the network
            images, normalize, workers = cached, setup.preset.normalize, 0

        def forward(x: torch.Tensor) -> torch.Tensor:
            # fp32 even under --bf16: the numbers must be what `evaluate` gives for the file
            return model(x.to(procs.device, memory_format=self.memory_format)).cpu()

        model.eval()
        logits, skipped = run_inference(
            forward,
            images,
            normalize=normalize,
            batch_size=micro_batch_limit(setup.cfg, procs),  # no gradients: the largest batch
            workers=workers,
            progress=setup.cfg.progress and procs.is_main,
            desc="validate",
        )
        keep = np.setdiff1d(np.arange(len(shard)), skipped)
        target = torch.from_numpy(np.asarray(shard.labels, np.int64)[keep])
        logits = torch.from_numpy(logits[keep]) if keep.size else torch.zeros(0, n_cls)
        top = logits.topk(min(5, n_cls), 1).indices
        confusion = torch.zeros(n_cls, n_cls, dtype=torch.float64)
        ones = torch.ones(len(target), dtype=torch.float64)
        confusion.index_put_((target, top[:, 0]), ones, accumulate=True)
        loss = F.cross_entropy(logits, target, reduction="sum").item() if keep.size else 0.0
        in_top5 = (top == target[:, None]).any(1).sum().item()
        sums = torch.tensor([loss, in_top5, keep.size, len(skipped)], dtype=torch.float64)
        summed = sum_over_processes(torch.cat([sums, confusion.flatten()]).to(procs.device), procs)
        loss, in_top5, n, n_skipped = summed[:4].tolist()
        confusion = summed[4:].cpu().reshape(n_cls, n_cls).numpy().astype(np.int64)
        n = max(n, 1)
        metrics = {  # VAL_KEYS
            "val_loss": loss / n,
            "val_top1": float(np.trace(confusion)) / n,
            "val_top5": in_top5 / n,
            "val_n": int(n),
            "val_skipped": int(n_skipped),
        }
        return metrics, confusion

    def _cached(self, shard: ImageDataset) -> CachedImages | None:
        """This process's validation images as the preset's center crops, cached (None, with
        a warning, where the cache cannot be built)."""
        if self.cache is None:
            try:
                self.cache = self._find_or_build(shard)
            except CacheUnavailable as e:
                if self.setup.procs.is_main:
                    warn(without_cache(e))
                self.use_cache = False
                return None
        return CachedImages(shard, self.cache)

    def _find_or_build(self, shard: ImageDataset) -> PixelCache:
        preset = self.setup.preset
        kind = f"val{preset.resize}{'sq' if preset.square_resize else ''}"
        return cached_pixels(
            shard.files,
            preset.crop,
            preset.pixels,
            kind,
            draft=preset.resize,
            workers=self.workers,
            progress=self.setup.cfg.progress and self.setup.procs.is_main,
        )
