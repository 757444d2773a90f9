"""Training recipes as data: one per architecture from scratch, and one for fine-tuning.

A recipe fills every training option the user did not give (``squeezenet train`` flags always
win). Learning rates are stated for the recipe's own batch and scaled with the global batch
actually used (``Recipe.lr_for``); a folder too small for the recipe's batch gets a smaller one
(``sized``). Each recipe names where its numbers come from.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "linear")


@dataclass(frozen=True)
class Recipe:
    """SGD with momentum or AdamW, a linear warm-up, then a cosine or linear decay to zero."""

    epochs: int
    batch_size: int
    lr: float  # peak learning rate at ``batch_size`` images per step
    warmup: float  # fraction of all steps spent warming up linearly
    schedule: str = "cosine"  # decay after the warm-up: "cosine" or "linear" (poly, power 1)
    label_smoothing: float = 0.1
    min_scale: float = 0.08  # random-resized-crop area range [min_scale, 1]
    weight_decay: float = 2e-4
    momentum: float = 0.9  # SGD's momentum, AdamW's beta1
    optimizer: str = "sgd"  # "sgd" (momentum) or "adamw" (decoupled weight decay)
    backbone_lr: float = 1.0  # pretrained layers' rate as a fraction of ``lr`` (fine-tuning)
    new_head_lr: float = 1.0  # a new classifier's rate as a multiple of ``lr`` (fine-tuning)
    source: str = ""

    @property
    def scaling(self) -> str:
        """``lr_for``'s rule in words."""
        return "linear" if self.optimizer == "sgd" else "square-root"

    def lr_for(self, batch_size: int) -> float:
        """The peak rate for another global batch: linear for SGD; for AdamW the square root
        of the ratio, but never above the recipe's rate (measured: plain squeezenet1_1 went back
        to chance at 0.005, batch 128, while the square root would give 0.0057 at batch 512)."""
        ratio = batch_size / self.batch_size
        return self.lr * (ratio if self.optimizer == "sgd" else math.sqrt(min(ratio, 1.0)))


# Plain SqueezeNet (no BatchNorm) has ReLU on its logits: with conv10's biases at 0 (torchvision's
# init) its maps died at any useful rate and the loss stayed at ln(classes) for good. With the
# biases at 1 (models/squeezenet.py, CONV10_BIAS) it trains, but under SGD conv10 moves ~100x
# faster relative to its weights than the layers below it; AdamW scales each weight's step and
# learns faster (at 0.005 it went back to chance: hence 0.002).
_PLAIN_SQUEEZENET = Recipe(
    epochs=30,
    batch_size=64,
    lr=0.002,
    warmup=0.1,
    min_scale=0.25,
    weight_decay=0.05,
    optimizer="adamw",
    source="benchmarks/RESULTS.md, Training (Imagenette, 20% held out, SGD and AdamW rates)",
)
_BN_SQUEEZENET = Recipe(
    epochs=30,
    batch_size=64,
    lr=0.002,
    warmup=0.05,
    min_scale=0.35,
    weight_decay=0.05,
    optimizer="adamw",
    source="benchmarks/RESULTS.md, Training (Imagenette, 20% held out, SGD and AdamW rates)",
)
_BASELINE = Recipe(
    epochs=30,
    batch_size=128,
    lr=0.04,
    warmup=0.05,
    min_scale=0.25,
    source="benchmarks/RESULTS.md, Training (Imagenette on an H100, lr 0.04 against 0.005)",
)

SCRATCH: dict[str, Recipe] = {
    "squeezenet1_0": _PLAIN_SQUEEZENET,
    "squeezenet1_1": _PLAIN_SQUEEZENET,
    "squeezenet1_0_bypass": _PLAIN_SQUEEZENET,
    "squeezenet1_0_complex_bypass": _PLAIN_SQUEEZENET,
    "squeezenet1_0_bn": _BN_SQUEEZENET,
    "squeezenet1_1_bn": _BN_SQUEEZENET,
    "squeezenet1_0_chainer": _BN_SQUEEZENET,
    "zfnet": _BASELINE,
    "alexnet": _BASELINE,
}

# Fine-tuning: the budget is a number of steps rather than of epochs, so a folder of 100 images
# gets as many updates as one of 10,000 (it just sees each image more). The rates are low: on
# data like the pretraining data, any rate near the original training's (0.005 at batch 64 for
# v1.1) first undoes what the weights knew, and the run only climbs back as the rate decays.
FINETUNE_STEPS = 450
# A classifier learned from nothing still climbs when 450 steps end, while kept rows are flat
# after the first epoch: a new classifier gets twice the steps, and x5 the rate (new_head_lr).
NEW_HEAD_STEPS = 2
FINETUNE = Recipe(
    epochs=0,  # from FINETUNE_STEPS and the data (finetune_recipe)
    batch_size=64,
    lr=0.002,
    warmup=0.05,
    label_smoothing=0.0,
    min_scale=0.35,
    weight_decay=5e-5,
    backbone_lr=0.05,
    new_head_lr=5.0,
    source="benchmarks/RESULTS.md, Training (v1.1's ImageNet weights fine-tuned on Imagenette)",
)


def sized_batch(n_train: int, batch_size: int) -> int:
    """``batch_size``, or less for a small folder: a power of two (at least 8) small enough
    for 8 steps per epoch, so that a folder smaller than one batch still trains."""
    return max(8, min(batch_size, 2 ** int(math.log2(max(n_train // 8, 1)))))


def sized(recipe: Recipe, n_train: int) -> Recipe:
    """``recipe`` with its batch sized to ``n_train`` images and its rate scaled to match."""
    batch = sized_batch(n_train, recipe.batch_size)
    return dataclasses.replace(recipe, batch_size=batch, lr=recipe.lr_for(batch))


def scratch_recipe(arch: str, n_train: int | None = None) -> Recipe:
    """The from-scratch recipe of ``arch`` (the plain SqueezeNet one for unknown names), with
    its batch sized to ``n_train`` training images when given (``sized``)."""
    recipe = SCRATCH.get(arch, _PLAIN_SQUEEZENET)
    return recipe if n_train is None else sized(recipe, n_train)


def finetune_recipe(n_train: int, new_head: bool = False) -> Recipe:
    """The fine-tuning recipe for ``n_train`` training images.

    The batch is at most 64 and small enough for 8 steps per epoch (a power of two, at least 8);
    the epochs give about ``FINETUNE_STEPS`` steps in all (twice that for a ``new_head``),
    between 3 and 50.
    """
    recipe = sized(FINETUNE, n_train)
    steps = max(n_train // recipe.batch_size, 1)
    budget = FINETUNE_STEPS * (NEW_HEAD_STEPS if new_head else 1)
    return dataclasses.replace(recipe, epochs=min(50, max(3, round(budget / steps))))
