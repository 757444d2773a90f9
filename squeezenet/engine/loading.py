"""The training images: a loader whose order and augmentation are functions of the epoch, and
the cache of decoded images it reads."""

from __future__ import annotations

import os
import signal

import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from ..data.cache import (
    CacheUnavailable,
    PixelCache,
    cached_pixels,
    check_every_class_readable,
    train_pixels,
)
from ..data.datasets import collate_skipping
from .augment import AugmentedDataset, TrainTransform
from .checks import warn
from .config import Setup


def without_cache(error: CacheUnavailable) -> str:
    """The warning of a run that goes on without the cache."""
    return f"{error}; the run goes on without it, decoding the images every epoch"


# Decoding workers run at the lowest priority. At equal priority a waking worker preempts one of
# the network's threads and the other waits for it at the next parallel region; at nice 19 they
# use the time the step leaves idle (Python, the optimizer, the barriers): squeezenet1_1 at 128
# px on 2 cores went from 308 to 360 img/s with the cache (benchmarks/RESULTS.md, Training).
# Nice only orders processes within one session's scheduling group (autogroup, where enabled).
WORKER_NICENESS = 19


def _init_worker(_worker_id: int) -> None:
    """Workers let the main process decide when to stop, so a step can finish after Ctrl-C;
    they yield the CPU to the network (``WORKER_NICENESS``)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(os, "nice"):  # not on Windows
        os.nice(WORKER_NICENESS)


class EpochOrder:
    """A sampler whose ``(epoch, index)`` keys are set before each epoch's iterator is made."""

    def __init__(self) -> None:
        self.keys: list[tuple[int, int]] = []

    def __iter__(self):
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)


class TrainImages:
    """The training images of each epoch, in the order ``DistributedSampler`` gives for it."""

    def __init__(self, setup: Setup) -> None:
        cfg, procs = setup.cfg, setup.procs
        self.setup = setup
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        workers = cfg.workers if cfg.workers is not None else min(4, (os.cpu_count() or 1) // local)
        self.order = EpochOrder()
        self.loader = DataLoader(
            AugmentedDataset(setup.train, TrainTransform(cfg.image_size, cfg.min_scale), cfg.seed),
            batch_size=setup.micro,
            sampler=self.order,
            num_workers=workers,
            collate_fn=collate_skipping,
            pin_memory=procs.device.type == "cuda",
            persistent_workers=workers > 0,
            prefetch_factor=4 if workers else None,
            worker_init_fn=_init_worker,
        )
        self.sampler = DistributedSampler(
            setup.train, num_replicas=procs.world, rank=procs.rank, seed=cfg.seed, drop_last=True
        )

    @property
    def workers(self) -> int:
        return self.loader.num_workers

    def epoch(self, epoch: int, first_step: int):
        """Micro-batches of ``epoch`` from its optimizer step ``first_step`` on."""
        per_step = self.setup.micro * self.setup.accum
        self.sampler.set_epoch(epoch)
        order = list(self.sampler)[first_step * per_step : self.setup.steps * per_step]
        self.order.keys = [(epoch, i) for i in order]
        return iter(self.loader)

    def attach_cache(self) -> bool:
        """Training images decoded once, as the uncached epochs see them; rank 0 builds the
        cache, then the others find it. Whether there is one: without room for it, the images
        are decoded every epoch."""
        images: AugmentedDataset = self.loader.dataset
        procs = self.setup.procs
        if procs.world == 1:
            images.cache = self._build_cache()
        elif procs.is_main:
            images.cache = self._build_cache()
            built = [images.cache is not None]
            dist.broadcast_object_list(built, src=0)
        else:
            built = [None]
            dist.broadcast_object_list(built, src=0)  # rank 0 built it, or could not
            images.cache = self._build_cache() if built[0] else None
        if images.cache is not None:
            check_every_class_readable(images.base, images.cache)
        return images.cache is not None

    def _build_cache(self) -> PixelCache | None:
        """The cache, or None where it cannot be built (a warning from rank 0 says so)."""
        try:
            return self._find_or_build()
        except CacheUnavailable as e:
            if self.setup.procs.is_main:
                warn(without_cache(e))
            return None

    def _find_or_build(self) -> PixelCache:
        size, show = self.setup.cfg.image_size, self.setup.cfg.progress and self.setup.procs.is_main
        files = self.setup.train.files
        pixels = train_pixels(size)
        return cached_pixels(files, size, pixels, "train", workers=self.workers, progress=show)
