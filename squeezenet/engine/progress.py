"""Where a run is: the sums of one optimizer step, of an epoch, and the progress saved with the
state."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from .distributed import Processes, sum_over_processes


@dataclass
class StepSums:
    """Sums of one optimizer step over its micro-batches, then over every process.

    On a process the fields are float64 tensors on the device, so that a micro-batch adds to
    them without waiting for the device; ``summed`` packs them into one tensor, all-reduces it
    once and unpacks it into floats.
    """

    stop: float | torch.Tensor = 0.0  # processes asked to stop (SIGINT, SIGTERM)
    loss: float | torch.Tensor = 0.0  # cross-entropy summed over images
    correct: float | torch.Tensor = 0.0
    seen: float | torch.Tensor = 0.0
    skipped: float | torch.Tensor = 0.0  # unreadable images
    dead: float | torch.Tensor = 0.0  # micro-batches whose logits were the same for every image

    @classmethod
    def zeros(cls, device: torch.device) -> StepSums:
        n = len(dataclasses.fields(cls))
        return cls(*(torch.zeros((), dtype=torch.float64, device=device) for _ in range(n)))

    def summed(self, procs: Processes) -> StepSums:
        """The sums of every process, as floats."""
        values = [getattr(self, f.name) for f in dataclasses.fields(self)]
        packed = torch.stack(
            [torch.as_tensor(v, dtype=torch.float64, device=procs.device) for v in values]
        )
        return StepSums(*sum_over_processes(packed, procs).tolist())

    @property
    def totals(self) -> EpochTotals:
        return EpochTotals(self.loss, self.correct, self.seen, self.skipped)


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

    def count(self, sums: StepSums) -> None:
        """Count an optimizer step and its sums."""
        self.step, self.step_in_epoch = self.step + 1, self.step_in_epoch + 1
        self.totals.add(sums.totals)

    def next_epoch(self) -> None:
        self.epoch, self.step_in_epoch = self.epoch + 1, 0
        self.totals, self.train_time = EpochTotals(), 0.0
