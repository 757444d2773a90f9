"""One run's mutable state and its steps: the model and optimizer, where the run is
(``Progress``), an epoch of optimizer steps, the record of an epoch, the checkpoint and the
return to an epoch's start after a divergence."""

from __future__ import annotations

import copy
import dataclasses
import errno
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ..errors import OutputError, SqueezeNetError
from ..weights.load import save_model
from .checkpoint import STATE_FILE, save_state, seed_everything, set_rng_states, step_seed
from .checks import MAX_RETRIES, Diverged, Watchdog, warn
from .config import Setup
from .loading import TrainImages
from .network import build_network, build_optimizer, lr_factor
from .outputs import RunFiles
from .progress import Progress, StepSums
from .stop import StopGuard
from .validate import VAL_KEYS, Validation, validates

SAVE_INTERVAL_S = 600  # besides every epoch, save the state at least this often


class Run:
    """The model, optimizer and progress of one run, with the steps ``train`` calls."""

    def __init__(self, setup: Setup) -> None:
        cfg, procs = setup.cfg, setup.procs
        self.setup, self.cfg, self.procs = setup, cfg, procs
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.autocast = torch.autocast(procs.device.type, torch.bfloat16, enabled=cfg.bf16)
        seed_everything(cfg.seed)  # the initial weights (and a new classifier) draw from it
        self.model = build_network(setup, self.memory_format)
        self.optimizer = build_optimizer(cfg, self.model)
        self.progress = Progress()
        self.saved: str | None = None  # what state.pt holds, in words (None: no state.pt yet)
        if setup.state is not None:
            self._restore(setup.state)
            setup.state = None  # restored: its tensors are not held for the whole run
            self.saved = self._where()
        self.net = self.model
        if procs.world > 1:
            ids = [procs.device.index] if procs.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids)
        self.images = TrainImages(setup)
        self.validation = Validation(setup, self.images.workers, self.memory_format)
        self.files = RunFiles(setup)
        self.guard = StopGuard()
        self.watch = Watchdog(cfg.num_classes, setup.accum * procs.world, cfg.lr)
        self.last_save = self.ticked = time.monotonic()

    def _restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.progress = Progress.from_dict(state["progress"])
        set_rng_states(state["rng"])

    def train_epoch(self, on_step: Callable[[int], None] | None) -> None:
        """The optimizer steps left in this epoch; Diverged (``checks.py``) ends it early."""
        progress, cfg, steps = self.progress, self.cfg, self.setup.steps
        batches = self.images.epoch(progress.epoch, progress.step_in_epoch)
        self.model.train()
        if cfg.freeze_features:
            self.model.features.eval()  # frozen BatchNorm keeps its pretrained statistics
        self.watch.begin_epoch(progress)
        bar = tqdm(
            total=steps,
            initial=progress.step_in_epoch,
            desc=f"epoch {progress.epoch + 1}/{cfg.epochs}",
            unit="step",
            disable=not (cfg.progress and self.procs.is_main),
            dynamic_ncols=True,
        )
        while progress.step_in_epoch < steps:
            stop = self._step(batches)
            seen = progress.totals
            bar.update()
            bar.set_postfix(
                loss=f"{seen.mean_loss:.3f}",
                acc=f"{seen.top1:.1%}",
                img_s=f"{seen.seen / progress.train_time:.0f}",
            )
            if stop:
                raise KeyboardInterrupt  # saved by train()
            if cfg.save_every and progress.step % cfg.save_every == 0:
                self.save()
            elif time.monotonic() - self.last_save > SAVE_INTERVAL_S:
                self.save()
            if on_step:
                on_step(progress.step)
        bar.close()

    def _step(self, batches) -> bool:
        """One optimizer step, checked before it is applied; whether a stop was asked for."""
        progress, procs = self.progress, self.procs
        start = time.perf_counter()
        with self.guard.deferring():
            torch.manual_seed(step_seed(self.cfg.seed, progress.step, procs.rank))
            lr = self._set_lr()
            sums = self._forward_backward(batches)
            sums.stop = float(self.guard.requested)
            sums = sums.summed(procs)
            progress.count(sums)
            epoch_end = progress.step_in_epoch == self.setup.steps
            self.watch.check(sums, progress, lr, epoch_end)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        progress.train_time += time.perf_counter() - start
        return bool(sums.stop)

    def _set_lr(self) -> float:
        """The rate of this step (warm-up and decay) on every parameter group; returns the peak."""
        cfg, total = self.cfg, self.setup.steps * self.cfg.epochs
        factor = lr_factor(self.progress.step, round(cfg.warmup * total), total, cfg.schedule)
        lr = cfg.lr * factor * self.progress.lr_scale
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        return lr

    def _forward_backward(self, batches) -> StepSums:
        """Gradients of the step's ``accum`` micro-batches; this process's sums."""
        procs, accum, micro = self.procs, self.setup.accum, self.setup.micro
        sums = StepSums.zeros(procs.device)
        for k in range(accum):
            batch = next(batches)
            if batch is None:
                if procs.world > 1:
                    raise SqueezeNetError(
                        f"{self.cfg.data}: a whole micro-batch of {micro} images was "
                        "unreadable; remove the damaged files"
                    )
                sums.skipped += micro
                continue
            x, y, _, skipped = batch
            x = x.to(procs.device, non_blocking=True)
            x = self.setup.preset.normalize(x, self.memory_format)
            y = y.to(procs.device, non_blocking=True)
            sync = k == accum - 1 or procs.world == 1
            with nullcontext() if sync else self.net.no_sync(), self.autocast:
                logits = self.net(x).float()
                loss = F.cross_entropy(logits, y, label_smoothing=self.cfg.label_smoothing)
                (loss / accum).backward()
            sums.loss += loss.detach() * len(y)
            sums.correct += (logits.argmax(1) == y).sum()
            sums.seen += len(y)
            sums.skipped += skipped
            if len(y) > 1:  # a tensor sum, not a bool: no device sync per micro-batch
                sums.dead += (logits.amax(0) == logits.amin(0)).all()
        return sums

    def validate_if_due(self) -> tuple[dict, np.ndarray] | None:
        """The validation of the epoch being finished, if it is one that validates."""
        if validates(self.progress.epoch + 1, self.cfg.epochs):
            return self.validation(self.model)
        return None

    def record_epoch(
        self, validation: tuple[dict, np.ndarray] | None, trained: bool = True
    ) -> None:
        """Record an epoch (untrained: epoch 0, the starting weights; ``validation`` None: not
        validated), write the outputs and save; uninterruptible."""
        progress = self.progress
        with self.guard.deferring():
            metrics, confusion = validation or (None, None)
            self._tick()
            progress.history.append(self._epoch_row(metrics, trained))
            best = metrics is not None and metrics["val_top1"] > progress.best_top1
            if metrics is not None:
                progress.confusion = confusion.tolist()
                progress.best_top1 = max(progress.best_top1, metrics["val_top1"])
            self.files.epoch(progress.history, self.model, best)
            if trained:
                progress.next_epoch()
            self.save()
        if self.guard.requested:
            raise KeyboardInterrupt

    def _epoch_row(self, metrics: dict | None, trained: bool) -> dict:
        progress, seen = self.progress, self.progress.totals
        stuck = self.watch.stuck(progress) if trained else False  # warns the first time
        return {
            "epoch": progress.epoch + 1 if trained else 0,
            "step": progress.step,
            "lr": self.optimizer.param_groups[0]["lr"] if trained else 0.0,
            "train_loss": seen.mean_loss if trained else None,
            "train_top1": seen.top1 if trained else None,
            **(metrics or dict.fromkeys(VAL_KEYS)),
            "train_images_per_s": seen.seen / max(progress.train_time, 1e-9) if trained else None,
            "train_skipped": int(seen.skipped),
            "elapsed_s": progress.elapsed,
            "stuck": stuck,
        }

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
        out = self.setup.out
        save_model(self.model, out / "last.safetensors")
        info = self.model.weights_info
        save_state(
            out,
            {
                "config": dataclasses.asdict(self.cfg),
                "class_ids": info.class_ids,
                "n_train": len(self.setup.train),
                "model_kwargs": info.model_kwargs,
                "preset": self.setup.preset.to_dict(),
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "progress": dataclasses.asdict(self.progress),
            },
        )
        self.saved = self._where()

    def _where(self) -> str:
        """Where the run is, as a saved state would name it."""
        progress = self.progress
        if progress.step_in_epoch == 0:
            return f"{STATE_FILE} of epoch {progress.epoch}"
        return f"{STATE_FILE} of step {progress.step} (epoch {progress.epoch + 1})"

    def unsaved(self, error: OutputError) -> OutputError:
        """``error`` (a file of the run not written) with what is saved and how to go on."""
        when = (
            "once there is room"
            if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
            else f"once {self.setup.out} can be written"
        )
        if self.saved is None:
            then = f"nothing saved yet: run it again {when}"
        else:
            then = f"{self.saved} is intact: 'squeezenet train ... --resume' continues {when}"
        return OutputError(f"{error}; {then}", error.path, error.cause, error.errno)

    def save_interrupted(self) -> None:
        """After Ctrl-C or SIGTERM: save, unless a step was cut short (``StopGuard``)."""
        if self.guard.busy:
            return
        self.save()
        if self.procs.is_main:
            where = f"epoch {self.progress.epoch + 1}, step {self.progress.step}"
            saved = self.setup.out / STATE_FILE
            print(f"interrupted: saved {saved} ({where}); continue with --resume", file=sys.stderr)

    def snapshot(self) -> dict:
        """The model, optimizer and progress at the start of an epoch, to return to."""
        return copy.deepcopy(
            {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "progress": dataclasses.asdict(self.progress),
            }
        )

    def recover(self, error: Diverged, snapshot: dict) -> None:
        """Back to the epoch's start at a 10x lower rate, or the end of the run."""
        self.optimizer.zero_grad(set_to_none=True)  # the step that diverged is not applied
        self.watch.recovered()
        retries = self.progress.retries + 1
        if retries > MAX_RETRIES:
            best = self.setup.out / "best.safetensors"
            note = f"; {best} holds the best weights so far" if best.exists() else ""
            raise SqueezeNetError(
                f"{error} after {MAX_RETRIES} retries at 10x lower rates: lower --lr{note}"
            )
        self.model.load_state_dict(snapshot["model"])
        self.optimizer.load_state_dict(snapshot["optimizer"])
        self.progress = Progress.from_dict(snapshot["progress"])
        self.progress.lr_scale, self.progress.retries = self.progress.lr_scale / 10, retries
        if self.procs.is_main:
            warn(
                f"{error}: back to the start of epoch {self.progress.epoch + 1} with the rate "
                f"x{self.progress.lr_scale:g} (retry {retries} of {MAX_RETRIES})"
            )
