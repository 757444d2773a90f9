"""Training and fine-tuning on one process or many (DDP under torchrun), resumable exactly.

Read top to bottom: the config; the recipe that fills every option left out (``recipes.py``:
each architecture's own from scratch, a fine-tuning one with ``--weights``); the set-up (data,
model, optimizer, loader); then ``Trainer.fit``: the starting weights evaluated as epoch 0,
then epochs of optimizer steps (SGD or AdamW), each followed by validation and checkpoints.

``batch_size`` is the global batch of one optimizer step: processes x accumulation x
micro-batch, as Caffe's ``iter_size`` did; recipes state their learning rate for their own
batch and it scales with the batch used (``Recipe.lr_for``).

Nothing is lost: a loss that explodes or becomes NaN, or falls back to chance after the network
had learned, sends the run back to the start of its epoch with a 10x lower rate (three times at
most); Ctrl-C or SIGTERM finish the step and save.
Exact resume: the data order (``DistributedSampler`` seeded by epoch), every augmentation
(seeded by seed, epoch and image) and dropout (torch reseeded per step and rank) are functions
of the step, so a run restarted from ``state.pt`` retraces the uninterrupted run bit for bit.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from ..data.cache import (
    CachedImages,
    PixelCache,
    cached_pixels,
    check_every_class_readable,
    train_pixels,
)
from ..data.datasets import (
    SPLIT_FILE,
    ImageDataset,
    collate_skipping,
    readable_names,
    train_val_datasets,
)
from ..data.transforms import Preprocess, get_preset
from ..errors import SqueezeNetError
from ..inference.pipeline import run as run_inference
from ..io import atomic_write_bytes
from ..models import build_model, default_input_size
from ..weights.info import WeightsInfo
from ..weights.load import create_model, load_model, save_model
from .augment import AugmentedDataset, TrainTransform
from .checkpoint import STATE_FILE, load_state, save_state, set_rng_states
from .distributed import Processes, native_bf16, setup_processes, sum_over_processes, val_shard
from .plots import plot_confusion, plot_curves
from .recipes import OPTIMIZERS, SCHEDULES, Recipe, finetune_recipe, scratch_recipe

SAVE_INTERVAL_S = 600  # besides every epoch, save the state at least this often
STUCK_CHECK_STEPS = 200  # look for a loss stuck at ln(classes) this often (and every epoch)
MAX_RETRIES = 3  # divergences recovered from (each at a 10x lower rate) before giving up
DEAD_STEPS = 10  # consecutive steps with the same logits for every image: the outputs died
LEARNED = 0.95  # an epoch with a loss below this x ln(classes), or top-1 twice chance, learned
MAX_VALIDATIONS = 10  # per run: more epochs than this are validated every k-th epoch
NEW_HEAD = "new classifier"
VAL_KEYS = ("val_loss", "val_top1", "val_top5", "val_n", "val_skipped")


@dataclass
class TrainConfig:
    """Everything that defines a run; ``None`` fields come from the data, weights and recipe."""

    data: str
    out: str
    arch: str | None = None  # default: the weights' arch, else squeezenet1_1
    weights: str | None = None  # start from these (classifier replaced if classes differ)
    num_classes: int | None = None  # default: number of class folders (or labels.csv maximum)
    freeze_features: bool = False
    reset_head: bool = False  # a new classifier even when the weights know the data's classes
    val_split: float | None = None  # share held out of a tree without train/ and val/ (0.2)
    # The recipe (recipes.py); None: the arch's from-scratch recipe, or fine-tuning's.
    epochs: int | None = None
    batch_size: int | None = None  # global images per optimizer step
    lr: float | None = None  # peak rate of the classifier (and of everything from scratch)
    backbone_lr: float | None = None  # pretrained layers' rate as a fraction of lr
    new_head_lr: float | None = None  # a new classifier's rate as a multiple of lr
    momentum: float | None = None
    optimizer: str | None = None  # sgd or adamw
    weight_decay: float | None = None
    warmup: float | None = None  # fraction of all steps spent warming up linearly
    schedule: str | None = None  # decay after the warm-up: cosine or linear
    label_smoothing: float | None = None
    min_scale: float | None = None  # random-resized-crop area range [min_scale, 1]
    image_size: int | None = None  # default: the arch's own (227 for v1.0, else 224)
    seed: int = 0
    cache: bool = True  # decode training and validation images once into memory-mapped files
    # How to run (free to change on --resume):
    micro_batch: int | None = None  # images per forward per process (default 64 CPU, 256 GPU)
    bf16: bool | None = None  # bfloat16 autocast; default: fine-tuning where the device has bf16
    channels_last: bool = True
    device: str | None = None
    workers: int | None = None
    save_every: int = 0  # also save the state every N steps (0: each epoch and every 10 min)
    progress: bool = True


RECIPE_FIELDS = tuple(f.name for f in dataclasses.fields(Recipe) if f.name != "source")
# Fields that define a run: a --resume that asks for other values is an error.
RUN_FIELDS = (
    ("arch", "weights", "num_classes", "freeze_features", "reset_head", "val_split")
    + RECIPE_FIELDS
    + ("image_size", "seed", "cache")
)


@dataclass
class TrainResult:
    model: nn.Module
    history: list[dict]
    best_top1: float
    run_dir: Path
    config: TrainConfig  # with every recipe field resolved


@dataclass
class EpochTotals:
    """Sums over the optimizer steps of one epoch, all processes together."""

    loss: float = 0.0  # summed over images
    correct: float = 0.0
    seen: float = 0.0
    skipped: float = 0.0  # unreadable images

    def add(self, other: EpochTotals) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def minus(self, earlier: EpochTotals) -> EpochTotals:
        """The sums since ``earlier`` totals of the same epoch."""
        fields = dataclasses.fields(self)
        return EpochTotals(*(getattr(self, f.name) - getattr(earlier, f.name) for f in fields))

    @property
    def mean_loss(self) -> float:
        return self.loss / max(self.seen, 1)

    @property
    def top1(self) -> float:
        return self.correct / max(self.seen, 1)


@dataclass
class Progress:
    """Where the run is, saved with the state."""

    epoch: int = 0  # epochs finished
    step_in_epoch: int = 0
    step: int = 0  # optimizer steps taken in all
    totals: EpochTotals = field(default_factory=EpochTotals)
    train_time: float = 0.0  # seconds spent in this epoch's steps
    elapsed: float = 0.0  # wall seconds of the whole run, over every resume
    history: list[dict] = field(default_factory=list)
    best_top1: float = -1.0
    confusion: list[list[int]] | None = None  # of the last validation
    first_loss: float | None = None  # of the run's first step: the yardstick of divergence
    lr_scale: float = 1.0  # 0.1 per recovered divergence
    retries: int = 0

    @classmethod
    def from_dict(cls, saved: dict) -> Progress:
        return cls(**{**saved, "totals": EpochTotals(**saved["totals"])})


class Diverged(Exception):
    """The loss exploded or became NaN in an optimizer step, or the network's outputs died or
    fell back to chance."""


class StopGuard:
    """SIGINT/SIGTERM inside a step ask for a stop at its end; elsewhere they interrupt at once."""

    def __init__(self) -> None:
        self.requested = False
        self.busy = False  # inside a step or the end-of-epoch bookkeeping
        self._old: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested or not self.busy:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> StopGuard:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


# Decoding workers run at the lowest priority. At equal priority a waking worker preempts one of
# the network's threads and the other waits for it at the next parallel region; at nice 19 they
# use the time the step leaves idle (Python, the optimizer, the barriers). squeezenet1_1 at 128
# px on 2 cores: 266 -> 338 img/s without the cache, 308 -> 360 with it (benchmarks/RESULTS.md,
# session 11).
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


def lr_factor(step: int, warmup_steps: int, total_steps: int, schedule: str = "linear") -> float:
    """Linear warm-up to 1, then a cosine or linear decay towards 0 at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    done = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.5 * (1 + math.cos(math.pi * done)) if schedule == "cosine" else 1.0 - done


def loss_is_stuck(loss: float, top1: float, num_classes: int, step: int, epochs_done: int) -> bool:
    """A loss within 2% of ln(classes) with chance accuracy: the network outputs nothing.

    Only after a first epoch or ``STUCK_CHECK_STEPS`` steps: before, a slow start looks the same.
    """
    if step < STUCK_CHECK_STEPS and epochs_done < 1:
        return False
    chance = math.log(num_classes)
    return abs(loss - chance) < 0.02 * chance and top1 < 1.5 / num_classes


def loss_diverged(loss: float, reference: float) -> bool:
    """NaN, inf, or 10x the ``reference`` loss (the run's first, or ln(classes) if larger)."""
    return not math.isfinite(loss) or loss > 10 * reference


def step_seed(seed: int, step: int, rank: int) -> int:
    """The torch seed of one optimizer step on one rank (dropout draws from it)."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])


def resolve(cfg: TrainConfig, train: ImageDataset, pretrained: nn.Module | None) -> TrainConfig:
    """Fill the ``None`` fields that define the run from the data, the weights and the recipe."""
    for name in ("epochs", "batch_size", "micro_batch", "image_size"):
        if (value := getattr(cfg, name)) is not None and value < 1:
            raise SqueezeNetError(f"--{name.replace('_', '-')} must be at least 1, not {value}")
    found = len(train.classes) if train.classes else max(train.labels) + 1
    if cfg.num_classes is not None and train.classes and cfg.num_classes != found:
        raise SqueezeNetError(
            f"--num-classes {cfg.num_classes} but {cfg.data} has {found} class folders"
        )
    arch = cfg.arch or (pretrained.weights_info.arch if pretrained else "squeezenet1_1")
    num_classes = cfg.num_classes or found
    if cfg.weights:
        new_head = pretrained is not None and _new_classifier(
            cfg, pretrained, train.classes, num_classes
        )
        recipe = finetune_recipe(len(train), new_head)
    else:
        recipe = scratch_recipe(arch)
    if cfg.optimizer not in (None, *OPTIMIZERS):
        raise SqueezeNetError(
            f"--optimizer must be {' or '.join(OPTIMIZERS)}, not {cfg.optimizer!r}"
        )
    if cfg.optimizer not in (None, recipe.optimizer) and cfg.lr is None:
        # SGD's rates are 5-20x AdamW's here: the recipe's rate would ruin the other optimizer
        raise SqueezeNetError(
            f"--optimizer {cfg.optimizer}: the recipe's rate {recipe.lr:g} (batch "
            f"{recipe.batch_size}) is for {recipe.optimizer}; give --lr for {cfg.optimizer} too"
        )
    batch_size = cfg.batch_size or recipe.batch_size
    filled = {n: getattr(recipe, n) for n in RECIPE_FIELDS if getattr(cfg, n) is None}
    cfg = dataclasses.replace(
        cfg,
        **{
            **filled,
            "batch_size": batch_size,
            "lr": cfg.lr if cfg.lr is not None else recipe.lr_for(batch_size),
        },
        arch=arch,
        num_classes=num_classes,
        image_size=cfg.image_size or default_input_size(arch),
    )
    if cfg.schedule not in SCHEDULES:
        raise SqueezeNetError(f"--schedule must be {' or '.join(SCHEDULES)}, not {cfg.schedule!r}")
    if max(train.labels) >= cfg.num_classes or min(train.labels) < 0:
        raise SqueezeNetError(f"{cfg.data}: labels must lie in 0..{cfg.num_classes - 1}")
    return cfg


def _make_model(
    cfg: TrainConfig, state: dict | None, pretrained: nn.Module | None, class_ids: list[str] | None
) -> nn.Module:
    """The model to train: rebuilt from the state, or pretrained, or initialised from scratch."""
    if state is not None:
        model = build_model(cfg.arch, num_classes=cfg.num_classes, **state["model_kwargs"])
        model.weights_info = WeightsInfo.from_meta(
            {"model_kwargs": state["model_kwargs"], "preprocess": state["preset"]},
            arch=cfg.arch,
            num_classes=cfg.num_classes,
        )
        return model
    if pretrained is None:
        return create_model(cfg.arch, num_classes=cfg.num_classes)
    info = pretrained.weights_info
    if info.arch != cfg.arch:
        raise SqueezeNetError(f"{cfg.weights}: holds {info.arch} weights, not {cfg.arch}")
    if _keeps_rows(cfg, pretrained, class_ids):
        _keep_rows(pretrained, [info.class_ids.index(c) for c in class_ids])
        info.extra["head"] = "classifier rows of the weights' own classes kept"
    elif _new_classifier(cfg, pretrained, class_ids, cfg.num_classes):
        pretrained.reset_classifier(cfg.num_classes)
        info.extra["head"] = NEW_HEAD
    return pretrained


def _keeps_rows(cfg: TrainConfig, pretrained: nn.Module, class_ids: list[str] | None) -> bool:
    """Whether the classifier keeps the weights' rows: they know every class of the data."""
    known = pretrained.weights_info.class_ids or []
    return not cfg.reset_head and bool(class_ids) and set(class_ids) <= set(known)


def _new_classifier(
    cfg: TrainConfig, pretrained: nn.Module, class_ids: list[str] | None, num_classes: int
) -> bool:
    """Whether training starts from a new classifier (asked for, or the classes differ)."""
    if _keeps_rows(cfg, pretrained, class_ids):
        return False
    return cfg.reset_head or pretrained.weights_info.num_classes != num_classes


def _keep_rows(model: nn.Module, rows: list[int]) -> None:
    """Shrink the classifier to ``rows`` of the old one, keeping their trained weights."""
    old = model.get_classifier()
    weight, bias = old.weight.detach()[rows].clone(), old.bias.detach()[rows].clone()
    model.reset_classifier(len(rows))
    new = model.get_classifier()
    with torch.no_grad():
        new.weight.copy_(weight)
        new.bias.copy_(bias)


def _check_resume_data(state: dict, cfg: TrainConfig, train: ImageDataset) -> None:
    old, new = state["class_ids"] or [], train.classes or []
    if old == new and state["n_train"] == len(train):
        return
    gone, added = [c for c in old if c not in new], [c for c in new if c not in old]
    raise SqueezeNetError(
        f"{cfg.out}: --resume with other data: the run was trained on {state['n_train']} images "
        f"of {len(old)} classes, {cfg.data} has {len(train)} of {len(new)}"
        + (f"; missing {', '.join(gone[:5])}" if gone else "")
        + (f"; new {', '.join(added[:5])}" if added else "")
    )


def _check_resume_settings(state: dict, cfg: TrainConfig) -> None:
    saved = state["config"]
    diffs = [
        f"--{k.replace('_', '-')} {saved.get(k)} (asked {getattr(cfg, k)})"
        for k in RUN_FIELDS
        if saved.get(k) != getattr(cfg, k)
    ]
    if diffs:
        raise SqueezeNetError(
            f"{cfg.out}: --resume of a run made with other settings: {'; '.join(diffs)}"
        )


def _split_batch(cfg: TrainConfig, procs: Processes) -> tuple[int, int]:
    """(micro-batch, accumulation steps) with processes x accum x micro = batch_size."""
    if cfg.batch_size % procs.world:
        raise SqueezeNetError(
            f"--batch-size {cfg.batch_size} is not a multiple of {procs.world} ranks"
        )
    per_rank = cfg.batch_size // procs.world
    accum = math.ceil(per_rank / _micro_batch_limit(cfg, procs))
    while per_rank % accum:
        accum += 1
    return per_rank // accum, accum


def _micro_batch_limit(cfg: TrainConfig, procs: Processes) -> int:
    return cfg.micro_batch or (256 if procs.device.type == "cuda" else 64)


def _warn(message: str) -> None:
    tqdm.write(f"warning: {message}", file=sys.stderr)


class Trainer:
    """One run: set up from a config (and a saved state), then ``fit()`` epoch by epoch."""

    def __init__(self, cfg: TrainConfig, procs: Processes, resume: bool) -> None:
        self.procs, self.out = procs, Path(cfg.out)
        state = self._saved_state(resume)
        if state is not None:  # what the caller left open is the saved run's
            saved = state["config"]
            cfg = dataclasses.replace(
                cfg, **{k: saved[k] for k in RUN_FIELDS if getattr(cfg, k) is None}
            )
        pretrained = load_model(cfg.weights) if cfg.weights and state is None else None
        preset = self._preset(state, pretrained)
        train, self.val, self.split = train_val_datasets(
            cfg.data, self.out, cfg.val_split, cfg.seed, preset, resume
        )
        if state is not None:
            _check_resume_data(state, cfg, train)
        self.cfg = cfg = resolve(cfg, train, pretrained)
        if state is not None:
            _check_resume_settings(state, cfg)
        self.n_train = len(train)
        self.preset = preset.with_size(cfg.image_size)
        self.val.transform, self.val.draft_size = self.preset, self.preset.resize
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        if cfg.bf16 is None:  # from scratch, plain SqueezeNet's conv10 died under CPU bf16
            bf16 = bool(cfg.weights) and native_bf16(procs.device)
            self.cfg = cfg = dataclasses.replace(cfg, bf16=bf16)
        self.autocast = torch.autocast(procs.device.type, torch.bfloat16, enabled=cfg.bf16)
        self._seed_everything()
        self.model = self._build_model(state, pretrained, train.classes)
        self.optimizer = self._build_optimizer()
        self.micro, self.accum = _split_batch(cfg, procs)
        self.steps = self._steps_per_epoch()
        self.progress = Progress()
        if state is not None:
            self._restore(state)
        self.net = self._distributed(self.model)
        self.order, self.loader, self.sampler = self._build_loader(train)
        self.guard = StopGuard()
        self.warned_stuck = False
        self.val_cache: PixelCache | None = None
        self.dead_steps = 0  # consecutive steps whose logits were the same for every image
        self.last_save = self.ticked = time.monotonic()

    # -- set-up steps, in the order __init__ calls them --

    def _saved_state(self, resume: bool) -> dict | None:
        if not resume and (self.out / STATE_FILE).exists():
            raise SqueezeNetError(
                f"{self.out}: already holds a run; pass --resume or choose another --out"
            )
        if not resume:
            return None
        state = load_state(self.out)
        state["config"].setdefault("optimizer", "sgd")  # runs saved before AdamW was a choice
        return state

    @staticmethod
    def _preset(state: dict | None, pretrained: nn.Module | None) -> Preprocess:
        if state is not None:
            return Preprocess.from_dict(state["preset"])
        return pretrained.weights_info.preprocess if pretrained else get_preset("torchvision")

    def _seed_everything(self) -> None:
        random.seed(self.cfg.seed)
        np.random.seed(self.cfg.seed)
        torch.manual_seed(self.cfg.seed)

    def _build_model(self, state, pretrained, class_ids: list[str] | None) -> nn.Module:
        cfg = self.cfg
        model = _make_model(cfg, state, pretrained, class_ids)
        info = model.weights_info
        info.preprocess, info.num_classes = self.preset, cfg.num_classes
        info.class_ids = class_ids
        info.classes = readable_names(class_ids) if class_ids else None
        info.source, info.file_format, info.entry, info.sha256 = (
            str(self.out),
            "safetensors",
            None,
            "",
        )
        if cfg.freeze_features:
            model.features.requires_grad_(False)
        return model.to(self.procs.device, memory_format=self.memory_format)

    def _build_optimizer(self) -> torch.optim.Optimizer:
        """The recipe's optimizer; the classifier at ``lr`` (``x new_head_lr`` if new), the rest
        ``x backbone_lr``."""
        cfg = self.cfg
        head = {id(p) for p in self.model.get_classifier().parameters()}
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        head_scale = cfg.new_head_lr if self._new_head() else 1.0
        groups = [
            {"params": [p for p in trainable if id(p) in head], "lr_scale": head_scale},
            {"params": [p for p in trainable if id(p) not in head], "lr_scale": cfg.backbone_lr},
        ]
        groups = [g for g in groups if g["params"]]
        if cfg.optimizer == "adamw":
            return torch.optim.AdamW(
                groups, lr=cfg.lr, betas=(cfg.momentum, 0.999), weight_decay=cfg.weight_decay
            )
        return torch.optim.SGD(
            groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )

    def _new_head(self) -> bool:
        return self.model.weights_info.extra.get("head") == NEW_HEAD

    def _steps_per_epoch(self) -> int:
        steps = self.n_train // self.procs.world // (self.micro * self.accum)
        if steps == 0:
            raise SqueezeNetError(
                f"{self.cfg.data}: {self.n_train} training images are fewer than one global "
                f"batch of {self.cfg.batch_size}; lower --batch-size"
            )
        return steps

    def _restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.progress = Progress.from_dict(state["progress"])
        set_rng_states(state["rng"])

    def _distributed(self, model: nn.Module) -> nn.Module:
        if self.procs.world == 1:
            return model
        ids = [self.procs.device.index] if self.procs.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def _build_loader(self, train: ImageDataset):
        cfg, procs = self.cfg, self.procs
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        workers = cfg.workers if cfg.workers is not None else min(4, (os.cpu_count() or 1) // local)
        transform = TrainTransform(cfg.image_size, cfg.min_scale)
        order = EpochOrder()
        loader = DataLoader(
            AugmentedDataset(train, transform, cfg.seed),  # its cache comes in fit()
            batch_size=self.micro,
            sampler=order,
            num_workers=workers,
            collate_fn=collate_skipping,
            pin_memory=procs.device.type == "cuda",
            persistent_workers=workers > 0,
            prefetch_factor=4 if workers else None,
            worker_init_fn=_init_worker,
        )
        sampler = DistributedSampler(
            train, num_replicas=procs.world, rank=procs.rank, seed=cfg.seed, drop_last=True
        )
        return order, loader, sampler

    def _attach_cache(self) -> None:
        """Training images decoded once, as the uncached epochs see them; rank 0 builds the
        cache."""
        images: AugmentedDataset = self.loader.dataset
        images.cache = self._pixel_cache(images.base, self.loader.num_workers)
        check_every_class_readable(images.base, images.cache)

    def _pixel_cache(self, train: ImageDataset, workers: int) -> PixelCache:
        size = self.cfg.image_size

        def build() -> PixelCache:
            show = self.cfg.progress and self.procs.is_main
            pixels = train_pixels(size)
            return cached_pixels(train.files, size, pixels, "train", workers=workers, progress=show)

        if self.procs.world == 1:
            return build()
        if self.procs.is_main:
            cache = build()
            dist.barrier()
            return cache
        dist.barrier()
        return build()

    def _val_images(self, shard: ImageDataset) -> CachedImages:
        """This process's validation images as the preset's center crops, cached (found or
        built on the first validation)."""
        if self.val_cache is None:
            preset = self.preset
            kind = f"val{preset.resize}{'sq' if preset.square_resize else ''}"
            self.val_cache = cached_pixels(
                shard.files,
                preset.crop,
                preset.pixels,
                kind,
                draft=preset.resize,
                workers=self.loader.num_workers,
                progress=self.cfg.progress and self.procs.is_main,
            )
        return CachedImages(shard, self.val_cache)

    # -- the run --

    def describe(self) -> str:
        cfg, head = self.cfg, self.model.weights_info.extra.get("head")
        split = (
            f"; val: {self.split['val_split']:.0%} of each class held out "
            f"({len(self.val)} images, {self.out / SPLIT_FILE})"
            if self.split
            else ""
        )
        mode = "fine-tuning" if cfg.weights else "from scratch"
        new_head = f"new classifier x{cfg.new_head_lr:g}, " if self._new_head() else ""
        rates = f" ({new_head}pretrained layers x{cfg.backbone_lr:g})" if cfg.weights else ""
        return (
            f"training {cfg.arch} ({mode}) on {self.n_train} images of {cfg.num_classes} classes "
            f"({self.steps} steps/epoch x {cfg.epochs} epochs): global batch {cfg.batch_size} = "
            f"{self.procs.world} process(es) x {self.accum} accumulation x {self.micro}, "
            f"{cfg.optimizer} lr {cfg.lr:g}{rates}"
            + f", {cfg.schedule}, {cfg.image_size}px, {self.procs.device}"
            + (" bf16" if cfg.bf16 else "")
            + (f"; {head}" if head else "")
            + split
        )

    def fit(self, on_step: Callable[[int], None] | None = None) -> TrainResult:
        if self.procs.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            if self.split is not None:
                atomic_write_bytes(self.out / SPLIT_FILE, json.dumps(self.split).encode())
            print(self.describe(), file=sys.stderr)
        if self.cfg.cache and self.progress.epoch < self.cfg.epochs:  # a finished run: nothing
            self._attach_cache()
        with self.guard:
            try:
                if self.cfg.weights and not self.progress.history:
                    self._record_epoch(*self._validate(), trained=False)  # the starting weights
                while self.progress.epoch < self.cfg.epochs:
                    snapshot = self._snapshot()
                    try:
                        self._train_epoch(on_step)
                    except Diverged as e:
                        self._recover(e, snapshot)
                        continue
                    epoch = self.progress.epoch + 1
                    self._record_epoch(
                        *(self._validate() if self._validates(epoch) else (None,) * 2)
                    )
            except KeyboardInterrupt:
                if not self.guard.busy:  # between steps, model and optimizer are consistent
                    self.save()
                    if self.procs.is_main:
                        where = f"epoch {self.progress.epoch + 1}, step {self.progress.step}"
                        saved = self.out / STATE_FILE
                        print(
                            f"interrupted: saved {saved} ({where}); continue with --resume",
                            file=sys.stderr,
                        )
                raise
        info = self.model.weights_info
        if self.procs.is_main and self.progress.confusion is not None:
            names = info.classes or [str(i) for i in range(self.cfg.num_classes)]
            plot_confusion(np.array(self.progress.confusion), names, self.out / "confusion.png")
        progress = self.progress
        return TrainResult(self.model, progress.history, progress.best_top1, self.out, self.cfg)

    def _tick(self) -> None:
        """Add the wall time since the last tick (or the start of this process) to the run's."""
        now = time.monotonic()
        self.progress.elapsed += now - self.ticked
        self.ticked = now

    def save(self) -> None:
        """Rank 0 writes last.safetensors and state.pt (both atomically)."""
        self._tick()
        self.last_save = time.monotonic()
        if not self.procs.is_main:
            return
        save_model(self.model, self.out / "last.safetensors")
        info = self.model.weights_info
        save_state(
            self.out,
            {
                "config": dataclasses.asdict(self.cfg),
                "class_ids": info.class_ids,
                "n_train": self.n_train,
                "model_kwargs": info.model_kwargs,
                "preset": self.preset.to_dict(),
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "progress": dataclasses.asdict(self.progress),
            },
        )

    def _snapshot(self) -> dict:
        """The model, optimizer and progress at the start of an epoch, to return to."""
        return copy.deepcopy(
            {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "progress": dataclasses.asdict(self.progress),
            }
        )

    def _recover(self, error: Diverged, snapshot: dict) -> None:
        """Back to the epoch's start at a 10x lower rate, or the end of the run."""
        self.guard.busy = False  # the step that diverged ended here
        self.dead_steps = 0
        retries = self.progress.retries + 1
        if retries > MAX_RETRIES:
            best = self.out / "best.safetensors"
            note = f"; {best} holds the best weights so far" if best.exists() else ""
            raise SqueezeNetError(
                f"{error} after {MAX_RETRIES} retries at 10x lower rates: lower --lr{note}"
            )
        self.model.load_state_dict(snapshot["model"])
        self.optimizer.load_state_dict(snapshot["optimizer"])
        self.progress = Progress.from_dict(snapshot["progress"])
        self.progress.lr_scale, self.progress.retries = self.progress.lr_scale / 10, retries
        if self.procs.is_main:
            _warn(
                f"{error}: back to the start of epoch {self.progress.epoch + 1} with the rate "
                f"x{self.progress.lr_scale:g} (retry {retries} of {MAX_RETRIES})"
            )

    def _set_lr(self) -> float:
        """The rate of this step (warm-up and decay) on every parameter group; returns the peak."""
        cfg, total = self.cfg, self.steps * self.cfg.epochs
        factor = lr_factor(self.progress.step, round(cfg.warmup * total), total, cfg.schedule)
        lr = cfg.lr * factor * self.progress.lr_scale
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        return lr

    def _train_epoch(self, on_step: Callable[[int], None] | None) -> None:
        progress, cfg = self.progress, self.cfg
        per_step = self.micro * self.accum
        self.sampler.set_epoch(progress.epoch)
        order = list(self.sampler)[progress.step_in_epoch * per_step : self.steps * per_step]
        self.order.keys = [(progress.epoch, i) for i in order]
        self.model.train()
        if cfg.freeze_features:
            self.model.features.eval()  # frozen BatchNorm keeps its pretrained statistics
        batches = iter(self.loader)
        checked = dataclasses.replace(progress.totals)  # the totals at the last stuck check
        bar = tqdm(
            total=self.steps,
            initial=progress.step_in_epoch,
            desc=f"epoch {progress.epoch + 1}/{cfg.epochs}",
            unit="step",
            disable=not (cfg.progress and self.procs.is_main),
            dynamic_ncols=True,
        )
        while progress.step_in_epoch < self.steps:
            self.guard.busy = True
            start = time.perf_counter()
            stop, totals = self._step(batches)
            progress.step, progress.step_in_epoch = progress.step + 1, progress.step_in_epoch + 1
            progress.totals.add(totals)
            progress.train_time += time.perf_counter() - start
            self.guard.busy = False
            seen = progress.totals
            bar.update()
            bar.set_postfix(
                loss=f"{seen.mean_loss:.3f}",
                acc=f"{seen.top1:.1%}",
                img_s=f"{seen.seen / progress.train_time:.0f}",
            )
            if progress.step % STUCK_CHECK_STEPS == 0:
                self._check_fallen_back(seen.minus(checked))
                self._check_stuck(seen.mean_loss, seen.top1)
                checked = dataclasses.replace(seen)
            if stop:
                raise KeyboardInterrupt  # saved by fit()
            if cfg.save_every and progress.step % cfg.save_every == 0:
                self.save()
            elif time.monotonic() - self.last_save > SAVE_INTERVAL_S:
                self.save()
            if on_step:
                on_step(progress.step)
        bar.close()
        if progress.totals.seen > checked.seen:  # at least once an epoch, before it is recorded
            self._check_fallen_back(progress.totals.minus(checked))

    def _step(self, batches) -> tuple[bool, EpochTotals]:
        """One optimizer step over ``accum`` micro-batches: (stop requested, totals of all)."""
        procs, progress = self.procs, self.progress
        torch.manual_seed(step_seed(self.cfg.seed, progress.step, procs.rank))
        lr = self._set_lr()
        # stop requested, loss sum, correct, seen, skipped, micro-batches whose logits were the
        # same for every image: summed over processes at the end
        sums = torch.zeros(6, dtype=torch.float64, device=procs.device)
        for k in range(self.accum):
            batch = next(batches)
            if batch is None:
                if procs.world > 1:
                    raise SqueezeNetError(
                        f"{self.cfg.data}: a whole micro-batch of {self.micro} images was "
                        "unreadable; remove the damaged files"
                    )
                sums[4] += self.micro
                continue
            x, y, _, skipped = batch
            x = self.preset.normalize(x.to(procs.device, non_blocking=True), self.memory_format)
            y = y.to(procs.device, non_blocking=True)
            sync = k == self.accum - 1 or procs.world == 1
            with nullcontext() if sync else self.net.no_sync(), self.autocast:
                logits = self.net(x).float()
                loss = F.cross_entropy(logits, y, label_smoothing=self.cfg.label_smoothing)
                (loss / self.accum).backward()
            sums[1] += loss.detach() * len(y)
            sums[2] += (logits.argmax(1) == y).sum()
            sums[3] += len(y)
            sums[4] += skipped
            if len(y) > 1:  # a tensor sum, not a bool: no device sync per micro-batch
                sums[5] += (logits.amax(0) == logits.amin(0)).all()
        sums[0] = float(self.guard.requested)
        stop, *rest, dead = sum_over_processes(sums, procs).tolist()
        totals = EpochTotals(*rest)
        if progress.first_loss is None and math.isfinite(totals.mean_loss):
            progress.first_loss = totals.mean_loss
        reference = max(progress.first_loss or 0.0, math.log(self.cfg.num_classes))
        if loss_diverged(totals.mean_loss, reference):
            self.optimizer.zero_grad(set_to_none=True)
            raise Diverged(f"the loss became {totals.mean_loss:.3g} at step {progress.step} "
                           f"(lr {lr:.3g})")  # fmt: skip
        # Dead outputs (every ReLU before the logits at 0, as in plain SqueezeNet's conv10) get no
        # gradient: the run would go on at chance level without ever recovering.
        self.dead_steps = self.dead_steps + 1 if dead == self.accum * procs.world else 0
        if self.dead_steps >= DEAD_STEPS:
            self.optimizer.zero_grad(set_to_none=True)
            raise Diverged(
                f"the network's outputs died (the same logits for every image for {DEAD_STEPS} "
                f"steps) at step {progress.step} (lr {lr:.3g})"
            )
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return bool(stop), totals

    def _check_fallen_back(self, recent: EpochTotals) -> None:
        """A network that had learned, back at chance over the ``recent`` steps, is dead (AdamW
        at 0.005 killed plain squeezenet1_1's class maps so, and it never came back): Diverged,
        so the run returns to the epoch's start at a lower rate instead of going on at chance."""
        cfg, progress = self.cfg, self.progress
        chance = math.log(cfg.num_classes)
        learned = any(
            r["train_top1"] >= 2 / cfg.num_classes or r["train_loss"] < LEARNED * chance
            for r in progress.history
            if r["train_loss"] is not None
        )
        if learned and loss_is_stuck(
            recent.mean_loss, recent.top1, cfg.num_classes, progress.step, progress.epoch
        ):
            raise Diverged(
                f"the loss fell back to ln({cfg.num_classes}) = {chance:.3f} with chance accuracy "
                f"({recent.mean_loss:.3f} over the last {recent.seen:.0f} images) at step "
                f"{progress.step}"
            )

    def _check_stuck(self, loss: float, acc: float) -> bool:
        """Whether the loss sits at ln(classes) (``loss_is_stuck``); warn the first time."""
        cfg, progress = self.cfg, self.progress
        stuck = loss_is_stuck(loss, acc, cfg.num_classes, progress.step, progress.epoch)
        if stuck and not self.warned_stuck:
            self.warned_stuck = True
            _warn(
                f"training loss {loss:.3f} is stuck at ln({cfg.num_classes}) = "
                f"{math.log(cfg.num_classes):.3f} after {self.progress.step} steps: the network "
                "has learned nothing yet (plain SqueezeNet starts slowly, and at too high a rate "
                f"its outputs die); if it stays there, try a lower --lr than {cfg.lr:g} or a *_bn "
                "architecture"
            )
        return stuck

    def _validate(self) -> tuple[dict, np.ndarray]:
        """Loss, top-1/top-5 and confusion matrix on the validation split (sharded over ranks)."""
        procs, n_cls = self.procs, self.cfg.num_classes
        shard = val_shard(self.val, procs)
        images, normalize, workers = shard, None, self.cfg.workers
        if self.cfg.cache:  # the center crops decoded once; each validation costs the network
            images, normalize, workers = self._val_images(shard), self.preset.normalize, 0

        def forward(x: torch.Tensor) -> torch.Tensor:
            # fp32 even under --bf16: the numbers must be what `evaluate` gives for the file
            return self.model(x.to(procs.device, memory_format=self.memory_format)).cpu()

        self.model.eval()
        logits, skipped = run_inference(
            forward,
            images,
            normalize=normalize,
            batch_size=_micro_batch_limit(self.cfg, procs),  # no gradients: the largest batch
            workers=workers,
            progress=self.cfg.progress and procs.is_main,
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

    def _validates(self, epoch: int) -> bool:
        """Validation after every epoch, or every k-th when there are more than
        ``MAX_VALIDATIONS`` (short epochs of a small folder), and always after the last."""
        every = math.ceil(self.cfg.epochs / MAX_VALIDATIONS)
        return epoch % every == 0 or epoch == self.cfg.epochs

    def _record_epoch(
        self, metrics: dict | None, confusion: np.ndarray | None, trained: bool = True
    ) -> None:
        """Record an epoch (untrained: epoch 0, the starting weights; ``metrics`` None: not
        validated), write metrics, plots and checkpoints; uninterruptible."""
        progress, cfg = self.progress, self.cfg
        self.guard.busy = True
        seen = progress.totals
        validated = metrics is not None
        metrics = metrics or dict.fromkeys(VAL_KEYS)
        self._tick()
        row = {
            "epoch": progress.epoch + 1 if trained else 0,
            "step": progress.step,
            "lr": self.optimizer.param_groups[0]["lr"] if trained else 0.0,
            "train_loss": seen.mean_loss if trained else None,
            "train_top1": seen.top1 if trained else None,
            **metrics,
            "train_images_per_s": seen.seen / max(progress.train_time, 1e-9) if trained else None,
            "train_skipped": int(seen.skipped),
            "elapsed_s": progress.elapsed,
            "stuck": self._check_stuck(seen.mean_loss, seen.top1) if trained else False,
        }
        progress.history.append(row)
        if validated:
            progress.confusion = confusion.tolist()
        if self.procs.is_main:
            _report_epoch(row, cfg)
            if validated and metrics["val_top1"] > progress.best_top1:
                save_model(self.model, self.out / "best.safetensors")
            lines = "".join(json.dumps(r) + "\n" for r in progress.history)
            atomic_write_bytes(self.out / "metrics.jsonl", lines.encode())
            plot_curves(_nan_for_none(progress.history), self.out / "curves.png")
        if validated:
            progress.best_top1 = max(progress.best_top1, metrics["val_top1"])
        if trained:
            progress.epoch, progress.step_in_epoch = progress.epoch + 1, 0
            progress.totals, progress.train_time = EpochTotals(), 0.0
        self.save()
        self.guard.busy = False
        if self.guard.requested:
            raise KeyboardInterrupt


def _nan_for_none(history: list[dict]) -> list[dict]:
    """Epoch 0 has no training numbers: plotted as gaps."""
    return [{k: math.nan if v is None else v for k, v in row.items()} for row in history]


def train(
    cfg: TrainConfig, *, resume: bool = False, on_step: Callable[[int], None] | None = None
) -> TrainResult:
    """Train (or fine-tune) as ``cfg`` says, writing checkpoints, metrics and plots to ``cfg.out``.

    ``resume`` continues the run saved in ``cfg.out``; ``on_step(step)`` is called after every
    optimizer step (and after any checkpoint it triggered). Under torchrun, every process calls
    this with the same config; rank 0 does all file I/O.
    """
    procs = setup_processes(cfg.device)
    try:
        result = Trainer(cfg, procs, resume).fit(on_step)
        if procs.world > 1:
            # Rank 0 still writes plots while the others are done: a rank that tore its gloo
            # group down then was seen to abort (SIGABRT) once in about 7 runs.
            dist.barrier()
        return result
    finally:
        if procs.world > 1:
            dist.destroy_process_group()


def _report_epoch(m: dict, cfg: TrainConfig) -> None:
    validated = m["val_top1"] is not None
    val = (
        f"val loss {m['val_loss']:.4f} top-1 {m['val_top1']:.2%} top-5 {m['val_top5']:.2%}"
        if validated
        else "not validated"
    )
    if m["epoch"] == 0:
        tqdm.write(f"epoch 0 (the starting weights): {val}", file=sys.stderr)
        return
    skipped = m["train_skipped"] + (m["val_skipped"] or 0)
    note = f", {skipped} unreadable images skipped" if skipped else ""
    tqdm.write(
        f"epoch {m['epoch']}/{cfg.epochs}: train loss {m['train_loss']:.4f} top-1 "
        f"{m['train_top1']:.2%} | {val} | {m['train_images_per_s']:.1f} img/s{note}",
        file=sys.stderr,
    )
