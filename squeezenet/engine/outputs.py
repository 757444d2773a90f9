"""What a run leaves in its folder and on stderr, written by rank 0 only: the description,
``split.json``, ``metrics.jsonl``, ``best.safetensors``, ``curves.png`` and ``confusion.png``
(``last.safetensors`` and ``state.pt`` are the checkpoint, ``Run.save``)."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
from torch import nn
from tqdm import tqdm

from ..data.datasets import SPLIT_FILE
from ..io import atomic_write_bytes, writable_dir
from ..weights.load import save_model
from .config import Setup, TrainConfig
from .plots import plot_confusion, plot_curves


def describe(setup: Setup, model: nn.Module) -> str:
    """The run in one line: data, shape of a step, optimizer, rates, device."""
    cfg, procs, head = setup.cfg, setup.procs, model.weights_info.extra.get("head")
    split = (
        f"; val: {setup.split['val_split']:.0%} of each class held out "
        f"({len(setup.val)} images, {setup.out / SPLIT_FILE})"
        if setup.split
        else ""
    )
    mode = "fine-tuning" if cfg.weights else "from scratch"
    new_head = f"new classifier x{cfg.new_head_lr:g}, " if cfg.new_classifier else ""
    rates = f" ({new_head}pretrained layers x{cfg.backbone_lr:g})" if cfg.weights else ""
    head = "new classifier" if cfg.new_classifier else head
    return (
        f"training {cfg.arch} ({mode}) on {len(setup.train)} images of {cfg.num_classes} classes "
        f"({setup.steps} steps/epoch x {cfg.epochs} epochs): global batch {cfg.batch_size} = "
        f"{procs.world} process(es) x {setup.accum} accumulation x {setup.micro}, "
        f"{cfg.optimizer} lr {cfg.lr:g}{rates}"
        + f", {cfg.schedule}, {cfg.image_size}px, {procs.device}"
        + (" bf16" if cfg.bf16 else "")
        + (f"; {head}" if head else "")
        + (f"; {setup.sizing}" if setup.sizing else "")
        + split
    )


class RunFiles:
    """The run's outputs; every method does nothing on ranks other than 0."""

    def __init__(self, setup: Setup) -> None:
        self.out, self.cfg, self.is_main = setup.out, setup.cfg, setup.procs.is_main

    def begin(self, setup: Setup, model: nn.Module) -> None:
        if not self.is_main:
            return
        writable_dir(self.out)  # a read-only folder fails now, not after an epoch of training
        if setup.split is not None:
            atomic_write_bytes(self.out / SPLIT_FILE, json.dumps(setup.split).encode())
        print(describe(setup, model), file=sys.stderr)

    def epoch(self, history: list[dict], model: nn.Module, best: bool) -> None:
        """The epoch just recorded (``history[-1]``) on stderr, ``metrics.jsonl`` and
        ``curves.png``; the weights as ``best.safetensors`` if they validated ``best``."""
        if not self.is_main:
            return
        _report_epoch(history[-1], self.cfg)
        if best:
            save_model(model, self.out / "best.safetensors")
        lines = "".join(json.dumps(r) + "\n" for r in history)
        atomic_write_bytes(self.out / "metrics.jsonl", lines.encode())
        plot_curves(_nan_for_none(history), self.out / "curves.png")

    def finish(self, confusion: list[list[int]] | None, model: nn.Module) -> None:
        """``confusion.png`` of the last validation."""
        if not self.is_main or confusion is None:
            return
        names = model.weights_info.classes or [str(i) for i in range(self.cfg.num_classes)]
        plot_confusion(np.array(confusion), names, self.out / "confusion.png")


def _nan_for_none(history: list[dict]) -> list[dict]:
    """Epoch 0 has no training numbers: plotted as gaps."""
    return [{k: math.nan if v is None else v for k, v in row.items()} for row in history]


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
