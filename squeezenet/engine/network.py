"""The network to train and its optimizer: rebuilt from the saved state, or the pretrained
weights with their classifier kept, cut to the data's classes or replaced, or a new network."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..data.datasets import readable_names
from ..errors import SqueezeNetError
from ..models import build_model
from ..weights.info import WeightsInfo
from ..weights.load import create_model
from .config import Setup, TrainConfig, keeps_rows

KEPT_ROWS = "classifier rows of the weights' own classes kept"


def build_network(setup: Setup, memory_format: torch.memory_format) -> nn.Module:
    """The model, labelled with the data's classes and the run's preprocessing, on the device
    (its weights are the saved run's once ``Run`` restores the state)."""
    cfg, class_ids = setup.cfg, setup.train.classes
    model = make_model(cfg, setup.state, setup.pretrained, class_ids)
    info = model.weights_info
    info.preprocess, info.num_classes = setup.preset, cfg.num_classes
    info.class_ids = class_ids
    info.classes = readable_names(class_ids) if class_ids else None
    info.source, info.file_format, info.entry, info.sha256 = str(setup.out), "safetensors", None, ""
    if cfg.freeze_features:
        model.features.requires_grad_(False)
    return model.to(setup.procs.device, memory_format=memory_format)


def make_model(
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
    if keeps_rows(cfg, pretrained, class_ids):
        _keep_rows(pretrained, [info.class_ids.index(c) for c in class_ids])
        info.extra["head"] = KEPT_ROWS
    elif cfg.new_classifier:
        pretrained.reset_classifier(cfg.num_classes)
    return pretrained


def _keep_rows(model: nn.Module, rows: list[int]) -> None:
    """Shrink the classifier to ``rows`` of the old one, keeping their trained weights."""
    old = model.get_classifier()
    weight, bias = old.weight.detach()[rows].clone(), old.bias.detach()[rows].clone()
    model.reset_classifier(len(rows))
    new = model.get_classifier()
    with torch.no_grad():
        new.weight.copy_(weight)
        new.bias.copy_(bias)


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The recipe's optimizer; the classifier at ``lr`` (``x new_head_lr`` if new), the rest
    ``x backbone_lr``."""
    head = {id(p) for p in model.get_classifier().parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    head_scale = cfg.new_head_lr if cfg.new_classifier else 1.0
    groups = [
        {"params": [p for p in trainable if id(p) in head], "lr_scale": head_scale},
        {"params": [p for p in trainable if id(p) not in head], "lr_scale": cfg.backbone_lr},
    ]
    groups = [g for g in groups if g["params"]]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(
            groups, lr=cfg.lr, betas=(cfg.momentum, 0.999), weight_decay=cfg.weight_decay
        )
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def lr_factor(step: int, warmup_steps: int, total_steps: int, schedule: str = "linear") -> float:
    """Linear warm-up to 1, then a cosine or linear decay towards 0 at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    done = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.5 * (1 + math.cos(math.pi * done)) if schedule == "cosine" else 1.0 - done
