"""Is the run still learning? One entry point after every optimizer step (``Watchdog.check``).

A loss that explodes or becomes NaN, outputs that died, or a network that had learned and fell
back to chance raise ``Diverged``: the run goes back to the start of its epoch at a 10x lower
rate (``MAX_RETRIES`` times at most). A loss that never left ln(classes) is only warned about:
plain SqueezeNet starts slowly.
"""

from __future__ import annotations

import dataclasses
import math
import sys

from tqdm import tqdm

from .progress import EpochTotals, Progress, StepSums

STUCK_CHECK_STEPS = 200  # look for a loss stuck at ln(classes) this often (and every epoch)
MAX_RETRIES = 3  # divergences recovered from (each at a 10x lower rate) before giving up
DEAD_STEPS = 10  # consecutive steps with the same logits for every image: the outputs died
LEARNED = 0.95  # an epoch with a loss below this x ln(classes), or top-1 twice chance, learned


class Diverged(Exception):
    """The loss exploded or became NaN in an optimizer step, or the network's outputs died or
    fell back to chance."""


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


def warn(message: str) -> None:
    tqdm.write(f"warning: {message}", file=sys.stderr)


class Watchdog:
    """The checks of one run, with what they remember between steps."""

    def __init__(self, num_classes: int, micro_batches: int, lr: float) -> None:
        self.num_classes = num_classes
        self.micro_batches = micro_batches  # per optimizer step, over every process
        self.lr = lr  # the configured peak, named in the stuck warning
        self.dead_steps = 0  # consecutive steps whose logits were the same for every image
        self.checked = EpochTotals()  # the epoch's totals at the last fallen-back check
        self.warned_stuck = False

    def begin_epoch(self, progress: Progress) -> None:
        self.checked = dataclasses.replace(progress.totals)

    def recovered(self) -> None:
        """The run went back to an epoch's start: the dead outputs are forgotten."""
        self.dead_steps = 0

    def check(self, sums: StepSums, progress: Progress, lr: float, epoch_end: bool) -> None:
        """After the step ``sums`` were counted in ``progress``, before the optimizer applies
        it: Diverged if the loss exploded, the outputs died, or (every ``STUCK_CHECK_STEPS``
        and at the ``epoch_end``) the network fell back to chance."""
        loss, step = sums.totals.mean_loss, progress.step - 1  # the step's own index
        if progress.first_loss is None and math.isfinite(loss):
            progress.first_loss = loss
        reference = max(progress.first_loss or 0.0, math.log(self.num_classes))
        if loss_diverged(loss, reference):
            raise Diverged(f"the loss became {loss:.3g} at step {step} (lr {lr:.3g})")
        # Dead outputs (every ReLU before the logits at 0, as in plain SqueezeNet's conv10) get
        # no gradient: the run would go on at chance level without ever recovering.
        self.dead_steps = self.dead_steps + 1 if sums.dead == self.micro_batches else 0
        if self.dead_steps >= DEAD_STEPS:
            raise Diverged(
                f"the network's outputs died (the same logits for every image for {DEAD_STEPS} "
                f"steps) at step {step} (lr {lr:.3g})"
            )
        periodic = progress.step % STUCK_CHECK_STEPS == 0
        if periodic or epoch_end:
            recent = progress.totals.minus(self.checked)
            if recent.seen > 0:
                self._check_fallen_back(recent, progress)
            if periodic:
                self.stuck(progress)
            self.checked = dataclasses.replace(progress.totals)

    def _check_fallen_back(self, recent: EpochTotals, progress: Progress) -> None:
        """A network that had learned, back at chance over the ``recent`` steps, is dead (AdamW
        at 0.005 killed plain squeezenet1_1's class maps so, and it never came back): Diverged,
        so the run returns to the epoch's start at a lower rate instead of going on at chance."""
        n = self.num_classes
        chance = math.log(n)
        learned = any(
            r["train_top1"] >= 2 / n or r["train_loss"] < LEARNED * chance
            for r in progress.history
            if r["train_loss"] is not None
        )
        if learned and loss_is_stuck(
            recent.mean_loss, recent.top1, n, progress.step, progress.epoch
        ):
            raise Diverged(
                f"the loss fell back to ln({n}) = {chance:.3f} with chance accuracy "
                f"({recent.mean_loss:.3f} over the last {recent.seen:.0f} images) at step "
                f"{progress.step}"
            )

    def stuck(self, progress: Progress) -> bool:
        """Whether the epoch's loss sits at ln(classes) (``loss_is_stuck``); warn the first
        time."""
        loss, acc, n = progress.totals.mean_loss, progress.totals.top1, self.num_classes
        stuck = loss_is_stuck(loss, acc, n, progress.step, progress.epoch)
        if stuck and not self.warned_stuck:
            self.warned_stuck = True
            warn(
                f"training loss {loss:.3f} is stuck at ln({n}) = {math.log(n):.3f} after "
                f"{progress.step} steps: the network has learned nothing yet (plain SqueezeNet "
                "starts slowly, and at too high a rate its outputs die); if it stays there, try "
                f"a lower --lr than {self.lr:g} or a *_bn architecture"
            )
        return stuck
