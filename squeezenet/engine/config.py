"""A run's configuration, resolved in one place: the options given, the saved run's on
``--resume``, then the data, the weights and the recipe (``recipes.py``) for the rest.

``prepare`` reads ``state.pt`` once, finds the data, loads the starting weights and returns a
``Setup``: the resolved config, the run's shape (micro-batch, accumulation, steps per epoch)
and what the model is built from. Nothing after it changes the config.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..data.datasets import ImageDataset, train_val_datasets
from ..data.transforms import Preprocess, get_preset
from ..errors import SqueezeNetError
from ..models import default_input_size
from ..weights.load import load_model
from .checkpoint import STATE_FILE, load_state
from .distributed import Processes, native_bf16
from .recipes import OPTIMIZERS, SCHEDULES, Recipe, finetune_recipe, scratch_recipe


@dataclass
class TrainConfig:
    """Everything that defines a run; ``None`` fields come from the data, weights and recipe."""

    data: str
    out: str
    arch: str | None = None  # default: the weights' arch, else squeezenet1_1
    weights: str | None = None  # start from these (classifier replaced if classes differ)
    num_classes: int | None = None  # default: number of class folders (or labels.csv maximum)
    freeze_features: bool | None = None  # (False) train the classifier only
    reset_head: bool | None = None  # (False) a new classifier even for classes the weights know
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
    seed: int | None = None  # (0)
    cache: bool | None = None  # (True) decode the images once into memory-mapped files
    # Resolved, not given: whether training started from a new classifier (it then moves at
    # new_head_lr); the starting weights are not loaded again on --resume, so it is saved.
    new_classifier: bool | None = None
    # How to run (free to change on --resume):
    micro_batch: int | None = None  # images per forward per process (default 64 CPU, 256 GPU)
    bf16: bool | None = None  # bfloat16 autocast; default: fine-tuning where the device has bf16
    channels_last: bool = True
    device: str | None = None
    workers: int | None = None
    save_every: int = 0  # also save the state every N steps (0: each epoch and every 10 min)
    progress: bool = True


# What a ``None`` above stands for when neither the options nor the saved run say (the other
# ``None`` fields come from the data, the weights and the recipe).
PLAIN_DEFAULTS = {"freeze_features": False, "reset_head": False, "seed": 0, "cache": True}

RECIPE_FIELDS = tuple(f.name for f in dataclasses.fields(Recipe) if f.name != "source")
# Fields that define a run: a --resume that asks for other values is an error.
RUN_FIELDS = (
    ("arch", "weights", "num_classes", "freeze_features", "reset_head", "val_split")
    + RECIPE_FIELDS
    + ("image_size", "seed", "cache", "new_classifier")
)


@dataclass
class Setup:
    """What a run is made of, resolved before anything is built."""

    cfg: TrainConfig  # every recipe field filled
    procs: Processes
    out: Path
    state: dict | None  # the saved run (--resume)
    pretrained: nn.Module | None  # the starting weights (not loaded on --resume)
    preset: Preprocess  # at cfg.image_size
    train: ImageDataset
    val: ImageDataset
    split: dict | None  # the held-out split made of a plain class-folder tree
    micro: int  # images per forward per process
    accum: int  # micro-batches per optimizer step
    steps: int  # optimizer steps per epoch
    sizing: str = ""  # how the recipe's batch and rate were sized to the data, if they were


def prepare(cfg: TrainConfig, procs: Processes, resume: bool) -> Setup:
    """Read the saved run (once), find the data, load the weights, resolve the config."""
    out = Path(cfg.out)
    state = _saved_state(out, resume)
    if state is not None:  # what the caller left open is the saved run's
        saved = state["config"]
        cfg = dataclasses.replace(
            cfg, **{k: saved[k] for k in RUN_FIELDS if getattr(cfg, k) is None}
        )
    cfg = with_plain_defaults(cfg)
    pretrained = load_model(cfg.weights) if cfg.weights and state is None else None
    preset = _preset(state, pretrained)
    train, val, split = train_val_datasets(cfg.data, out, cfg.val_split, cfg.seed, preset, resume)
    if state is not None:
        _check_resume_data(state, cfg, train)
    given = cfg
    cfg = resolve(cfg, train, pretrained)
    if state is not None:
        _check_resume_settings(state, cfg)
    if cfg.bf16 is None:  # from scratch, plain SqueezeNet's conv10 died under CPU bf16
        cfg = dataclasses.replace(cfg, bf16=bool(cfg.weights) and native_bf16(procs.device))
    preset = preset.with_size(cfg.image_size)
    val.transform, val.draft_size = preset, preset.resize
    micro, accum = _split_batch(cfg, procs)
    steps = len(train) // procs.world // (micro * accum)
    if steps == 0:
        raise SqueezeNetError(
            f"{cfg.data}: {len(train)} training images are fewer than one global "
            f"batch of {cfg.batch_size}; lower --batch-size"
        )
    sizing = _sizing(given, cfg, len(train)) if state is None else ""
    return Setup(
        cfg, procs, out, state, pretrained, preset, train, val, split, micro, accum, steps, sizing
    )


def _sizing(given: TrainConfig, cfg: TrainConfig, n_train: int) -> str:
    """Words for a from-scratch batch and rate the recipe sized to a small folder."""
    recipe = scratch_recipe(cfg.arch)
    if given.weights or given.batch_size or cfg.batch_size == recipe.batch_size:
        return ""
    rate = "" if given.lr is not None else f", lr {recipe.lr:g} scaled by the {recipe.scaling} rule"
    return f"the recipe's batch {recipe.batch_size} sized to {n_train} images{rate}"


def with_plain_defaults(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with ``PLAIN_DEFAULTS`` for the fields still ``None``."""
    return dataclasses.replace(
        cfg, **{k: v for k, v in PLAIN_DEFAULTS.items() if getattr(cfg, k) is None}
    )


def _saved_state(out: Path, resume: bool) -> dict | None:
    if not resume and (out / STATE_FILE).exists():
        raise SqueezeNetError(f"{out}: already holds a run; pass --resume or choose another --out")
    return load_state(out) if resume else None


def _preset(state: dict | None, pretrained: nn.Module | None) -> Preprocess:
    if state is not None:
        return Preprocess.from_dict(state["preset"])
    return pretrained.weights_info.preprocess if pretrained else get_preset("torchvision")


def resolve(cfg: TrainConfig, train: ImageDataset, pretrained: nn.Module | None) -> TrainConfig:
    """Fill the ``None`` fields that define the run from the data, the weights and the recipe."""
    cfg = with_plain_defaults(cfg)
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
    new_classifier = cfg.new_classifier  # on --resume, the saved decision
    if pretrained is not None:
        new_classifier = new_classifier_needed(cfg, pretrained, train.classes, num_classes)
    new_classifier = bool(new_classifier)
    n = len(train)
    recipe = finetune_recipe(n, new_classifier) if cfg.weights else scratch_recipe(arch, n)
    _check_optimizer(cfg, recipe)
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
        new_classifier=new_classifier,
    )
    if cfg.schedule not in SCHEDULES:
        raise SqueezeNetError(f"--schedule must be {' or '.join(SCHEDULES)}, not {cfg.schedule!r}")
    if max(train.labels) >= cfg.num_classes or min(train.labels) < 0:
        raise SqueezeNetError(f"{cfg.data}: labels must lie in 0..{cfg.num_classes - 1}")
    return cfg


def _check_optimizer(cfg: TrainConfig, recipe: Recipe) -> None:
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


def keeps_rows(cfg: TrainConfig, pretrained: nn.Module, class_ids: list[str] | None) -> bool:
    """Whether the classifier keeps the weights' rows: they know every class of the data."""
    known = pretrained.weights_info.class_ids or []
    return not cfg.reset_head and bool(class_ids) and set(class_ids) <= set(known)


def new_classifier_needed(
    cfg: TrainConfig, pretrained: nn.Module, class_ids: list[str] | None, num_classes: int
) -> bool:
    """Whether training starts from a new classifier (asked for, or the classes differ)."""
    if keeps_rows(cfg, pretrained, class_ids):
        return False
    return cfg.reset_head or pretrained.weights_info.num_classes != num_classes


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
    accum = math.ceil(per_rank / micro_batch_limit(cfg, procs))
    while per_rank % accum:
        accum += 1
    return per_rank // accum, accum


def micro_batch_limit(cfg: TrainConfig, procs: Processes) -> int:
    return cfg.micro_batch or (256 if procs.device.type == "cuda" else 64)
