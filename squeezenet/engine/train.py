"""Training and fine-tuning on one process or many (DDP under torchrun), resumable exactly.

``train`` reads top to bottom: the config resolved once (``config.prepare``: the options, the
saved run, the data, the weights, then the recipe of ``recipes.py`` for the rest); the run built
(``run.Run``: model, optimizer, loader); the starting weights evaluated as epoch 0 when
fine-tuning; then epochs of optimizer steps (SGD or AdamW), each recorded (validation, the
files of ``outputs.py``) and saved.

``batch_size`` is the global batch of one optimizer step: processes x accumulation x
micro-batch, as Caffe's ``iter_size`` did; recipes state their learning rate for their own
batch and it scales with the batch used (``Recipe.lr_for``).

Nothing is lost: a loss that explodes or becomes NaN, or falls back to chance after the network
had learned (``checks.py``), sends the run back to the start of its epoch with a 10x lower rate
(three times at most); Ctrl-C or SIGTERM finish the step and save. A file that cannot be written
(a full disk, a read-only folder) ends the run in one line saying what ``state.pt`` still holds:
every file is replaced atomically, so the earlier one is intact and ``--resume`` goes on.
Exact resume: the data order (``DistributedSampler`` seeded by epoch), every augmentation
(seeded by seed, epoch and image) and dropout (torch reseeded per step and rank) are functions
of the step, so a run restarted from ``state.pt`` retraces the uninterrupted run bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch.distributed as dist
from torch import nn

from ..errors import OutputError
from .checks import Diverged
from .config import RECIPE_FIELDS, RUN_FIELDS, TrainConfig, prepare
from .distributed import setup_processes
from .run import Run

__all__ = ["RECIPE_FIELDS", "RUN_FIELDS", "TrainConfig", "TrainResult", "train"]


@dataclass
class TrainResult:
    model: nn.Module
    history: list[dict]
    best_top1: float
    run_dir: Path
    config: TrainConfig  # with every recipe field resolved


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
        setup = prepare(cfg, procs, resume)
        cfg, run = setup.cfg, Run(setup)
        try:
            _epochs(run, on_step)
        except OutputError as error:  # a full disk, a read-only folder: what is saved, and how on
            raise run.unsaved(error) from None
        if procs.world > 1:
            # Rank 0 may still be writing plots: a rank that tears its gloo group down before
            # the others are done can abort (SIGABRT).
            dist.barrier()
        return TrainResult(run.model, run.progress.history, run.progress.best_top1, setup.out, cfg)
    finally:
        if procs.world > 1:
            dist.destroy_process_group()


def _epochs(run: Run, on_step: Callable[[int], None] | None) -> None:
    """The run's files begun, its epochs trained and recorded, its files finished."""
    cfg = run.cfg
    run.files.begin(run.setup, run.model)
    if cfg.cache and run.progress.epoch < cfg.epochs:  # a finished run decodes nothing
        if not run.images.attach_cache():  # no room: validation does not try again either
            run.validation.use_cache = False
    with run.guard:
        try:
            if cfg.weights and not run.progress.history:  # the starting weights: epoch 0
                run.record_epoch(run.validation(run.model), trained=False)
            while run.progress.epoch < cfg.epochs:
                snapshot = run.snapshot()
                try:
                    run.train_epoch(on_step)
                except Diverged as error:
                    run.recover(error, snapshot)
                    continue
                run.record_epoch(run.validate_if_due())
        except KeyboardInterrupt:
            run.save_interrupted()
            raise
    run.files.finish(run.progress.confusion, run.model)
