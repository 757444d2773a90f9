"""Training recipes as data: one per architecture from scratch, and one for fine-tuning.

A recipe fills every training option the user did not give (``squeezenet train`` flags always
win). Learning rates are stated for the recipe's own batch and scaled linearly with the global
batch actually used. Each recipe names where its numbers come from.
"""

from __future__ import annotations

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

    def lr_for(self, batch_size: int) -> float:
        """The peak rate for another global batch: linear for SGD; for AdamW the square root
        of the ratio, but never above the recipe's rate (measured: plain squeezenet1_1 went back
        to chance at 0.005, batch 128, while the square root would give 0.0057 at batch 512)."""
        ratio = batch_size / self.batch_size
        return self.lr * (ratio if self.optimizer == "sgd" else math.sqrt(min(ratio, 1.0)))


# Plain SqueezeNet (no BatchNorm) has ReLU on its logits: with conv10's biases at 0 (torchvision's
# init) its maps died at any useful rate and the loss stayed at ln(classes) for good. With the
# biases at 1 (models/squeezenet.py, CONV10_BIAS) it trains, but under SGD conv10 moves ~100x
# faster relative to its weights than the layers below it (|g|/|w| at init: 9.8 against
# 0.006-0.09); AdamW scales each weight's step and learns faster.
_PLAIN_SQUEEZENET = Recipe(
    epochs=30,
    batch_size=64,
    lr=0.002,
    warmup=0.1,
    min_scale=0.25,
    weight_decay=0.05,
    optimizer="adamw",
    source="measured on Imagenette train (10 classes, 20% held out), 128 px, the 20-epoch "
    "schedule, held-out top-1 at epoch 6: SGD at 0.01, batch 128 (torchvision's reference rate) "
    "37.2%, at 0.02 31.5%, at 0.04 23.1%; AdamW (weight decay 0.05) at 0.002, batch 128 40.2% "
    "(59.8% after 20 epochs), at 0.005 back to chance in epoch 3; batch 64 at 0.002 43.8%, batch "
    "32 35.1%",
)
_BN_SQUEEZENET = Recipe(
    epochs=30,
    batch_size=64,
    lr=0.002,
    warmup=0.05,
    min_scale=0.35,
    weight_decay=0.05,
    optimizer="adamw",
    source="measured: squeezenet1_1_bn at lr 0.08, batch 128, 5% warm-up, linear decay reached "
    "75.8% on Imagenette in 10 epochs at 128 px (issue 10's CPU probe); then on Imagenette train "
    "(20% held out), 10 epochs at 128 px, cosine, label smoothing 0.1: SGD, batch 128 at 0.08 "
    "with crops of 25-100% 69.17%, batch 64 at 0.04 with crops of 35-100% 70.96%; AdamW "
    "(weight decay 0.05), batch 64 at 0.002 72.02% (73.18% at epoch 9 against 71.2%), at 0.004 "
    "70.96%; those crops came from the first cache's 146-px squares, and from the whole 224-px "
    "photos this recipe reached 74.55%",
)
_BASELINE = Recipe(
    epochs=30,
    batch_size=128,
    lr=0.04,
    warmup=0.05,
    min_scale=0.25,
    source="measured on Imagenette (H100, 112 px, batch 128): lr 0.04 reached 71.5% (AlexNet) "
    "and 75.1% (ZFNet) in 22 epochs, lr 0.005 (torchvision's 0.01 at batch 256) only 44% / 34% "
    "in 14",
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
# A classifier learned from nothing was still climbing when 450 steps ended: held-out 93.19%,
# 93.82%, 94.24%, 94.35% over 4 epochs of 118 steps (E7 in benchmarks/RESULTS.md), while kept
# rows were flat after the first epoch (E6). So a new classifier gets twice the steps.
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
    source="measured on 80% of Imagenette train, 20% held out, v1.1's ImageNet weights, 4 "
    "epochs (benchmarks/RESULTS.md): rows kept, 95.62% at the start; classifier 0.01, the rest "
    "x0.1, label smoothing 0.1: 94.46% after epoch 1, 95.20% at the end; 0.005 everywhere: "
    "89.12% after epoch 1; this recipe: 95.25%, then 95.46%. A new classifier at 0.002 was "
    "still climbing after 4 epochs (93.19% to 94.24%), hence x5 for a new one",
)


def scratch_recipe(arch: str) -> Recipe:
    """The from-scratch recipe of ``arch`` (the plain SqueezeNet one for unknown names)."""
    return SCRATCH.get(arch, _PLAIN_SQUEEZENET)


def finetune_recipe(n_train: int, new_head: bool = False) -> Recipe:
    """The fine-tuning recipe for ``n_train`` training images.

    The batch is at most 64 and small enough for 8 steps per epoch (a power of two, at least 8);
    the epochs give about ``FINETUNE_STEPS`` steps in all (twice that for a ``new_head``),
    between 3 and 50.
    """
    batch = max(8, min(FINETUNE.batch_size, 2 ** int(math.log2(max(n_train // 8, 1)))))
    steps = max(n_train // batch, 1)
    budget = FINETUNE_STEPS * (NEW_HEAD_STEPS if new_head else 1)
    epochs = min(50, max(3, round(budget / steps)))
    return Recipe(
        **{**FINETUNE.__dict__, "epochs": epochs, "batch_size": batch, "lr": FINETUNE.lr_for(batch)}
    )
