"""Per-layer bits and densities for a byte budget, from measured layer sensitivities.

1. **Sensitivities.** Every layer's inputs on calibration images (through the original
   model) give its ``H = X Xᵀ``. Each option (bits, density) is applied to that layer alone
   with OBS (``reconstruct.LayerProblem``) and measured twice: the output error it adds,
   ``‖(W - Ŵ) X‖²``, and the exact size of its ``.sqz`` record (the container encodes it).
   A gain per layer turns that output error into the network's: the KL divergence of the
   logits when the layer alone is compressed at a reference option, over that option's error.
2. **Allocation.** A multiple-choice knapsack (dynamic programming over bytes) picks the
   option of every layer that minimises the summed predicted error within a budget; one
   table answers every budget, so it also gives the frontier of (bytes, predicted error).
3. **Real decisions.** The pipeline compresses chosen allocations for real, layer after layer
   (each layer sees the inputs through the layers compressed before it), and evaluates them
   on a held-out split of the images that calibration never saw.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..inference.pipeline import topk_accuracy
from ..weights.formats import sqz as container
from .kmeans import codebooks
from .prune import bake, density, layer_roles
from .reconstruct import Calibration, LayerProblem, reconstruct, sibling_groups, single_thread

BITS = (2, 3, 4, 5, 6, 7, 8)
DENSITIES = (1.0, 0.6, 0.4, 0.25)  # fractions of the weights a layer has now
REFERENCE_BITS = 3  # the option whose effect on the logits calibrates a layer's gain
UNIT = 16  # bytes per step of the knapsack's table


@dataclass(frozen=True)
class Choice:
    """How one layer is stored: ``bits`` per code and the fraction of weights kept
    (``density`` 0: every weight pruned, the bias alone carries the layer's mean output)."""

    bits: int
    density: float


EMPTY = Choice(1, 0.0)


@dataclass
class Option:
    choice: Choice
    nbytes: int  # the layer's record in the .sqz payload, exactly
    error: float  # predicted increase of the logits' KL divergence


def record_bytes(codes: torch.Tensor, k: int, dtype: str, gap_bits: int | None = None) -> int:
    """Exact size of the container record of a tensor with these codes (0: pruned) and a
    codebook of ``k`` values, as ``sqz.pack`` writes it, from the symbol counts alone."""
    return container.shared_record_bytes(codes.cpu().numpy(), k, dtype, gap_bits)


def _kl(reference: torch.Tensor, logits: torch.Tensor) -> float:
    """KL divergence of ``logits``' softmax from ``reference``'s, averaged over the images."""
    target = F.log_softmax(reference.double(), 1)
    return float(F.kl_div(F.log_softmax(logits.double(), 1), target, reduction="batchmean",
                          log_target=True))  # fmt: skip


def _forward(model: nn.Module, images: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    device = next(model.parameters()).device
    with torch.inference_mode():
        return torch.cat([
            model(images[i : i + batch_size].to(device).float()).cpu()
            for i in range(0, len(images), batch_size)
        ])  # fmt: skip


def sensitivities(
    model: nn.Module,
    images: torch.Tensor,
    *,
    bits: tuple[int, ...] = BITS,
    densities: tuple[float, ...] = DENSITIES,
    gain_images: int = 64,
    dtype: str = "float16",
    gap_bits: int | None = None,
    progress: bool = True,
) -> dict[str, list[Option]]:
    """Role -> every option of that layer with its exact bytes and predicted error.

    Densities are fractions of the layer's own (Song Han's masks are kept and may be
    extended); an emptied layer (``EMPTY``) is always an option, so any budget above the
    container's fixed overhead has an allocation.
    """
    model = copy.deepcopy(model).eval()
    bake(model)
    roles = layer_roles(model)
    reference_bits = min(bits, key=lambda b: (abs(b - REFERENCE_BITS), b))
    table = {}
    calibration = Calibration(model, images)
    logits = calibration.outputs(gain_images)
    bar = tqdm(total=len(roles), desc="layer sensitivities", disable=not progress)
    for group in sibling_groups(roles):
        hessians = calibration.hessians([roles[role] for role in group])
        for role, hessian in zip(group, hessians, strict=True):
            table[role] = _layer_options(roles[role], hessian, bits, densities, dtype, gap_bits,
                                         reference_bits, calibration, logits)  # fmt: skip
            bar.update()
    bar.close()
    return table


def _layer_options(
    module, hessian, bits, densities, dtype, gap_bits, reference_bits, calibration, logits
) -> list[Option]:
    own = density(module.weight)
    problem = LayerProblem.of(module, hessian)
    options, reference = [], None
    with single_thread():
        for fraction in sorted(set(densities) | {1.0, 0.0}, reverse=True):
            pruned = problem.prune(None if fraction == 1 else own * fraction)
            widths = list(bits) if fraction else [EMPTY.bits]
            for b, (w, centroids) in zip(widths, problem.share_widths(pruned, widths), strict=True):
                size = record_bytes(problem.codes(w, centroids), 1 << b, dtype, gap_bits)
                options.append(Option(Choice(b, round(own * fraction, 6)), size, problem.error(w)))
                if fraction == 1 and b == reference_bits:
                    reference = (w, options[-1].error)
    gain = _gain(module, problem, reference, calibration, logits)
    for option in options:
        option.error *= gain
    return options


def _gain(module, problem, reference, calibration, logits) -> float:
    """KL divergence of the logits per unit of this layer's output error, measured with the
    layer alone replaced by its reference option's weights."""
    w, error = reference
    w = w[:, problem.order.argsort()]  # back to the original column order
    saved = module.weight.data.clone(), None if module.bias is None else module.bias.data.clone()
    module.weight.data.copy_(w[:, :-1].reshape(module.weight.shape).float())
    if module.bias is not None:
        module.bias.data.copy_(w[:, -1].float())
    try:
        kl = _kl(logits, calibration.outputs(len(logits)))
    finally:
        module.weight.data.copy_(saved[0])
        if saved[1] is not None:
            module.bias.data.copy_(saved[1])
    return kl / error if error > 0 else 0.0


class Knapsack:
    """The least summed predicted error for every budget, by dynamic programming in steps of
    ``UNIT`` bytes (each option's size rounded up, so a plan never exceeds its budget)."""

    def __init__(self, table: dict[str, list[Option]], allowed=None) -> None:
        self.table = {
            role: [o for o in options if allowed is None or allowed(role, o.choice)]
            for role, options in table.items()
        }
        cells = sum(max(math.ceil(o.nbytes / UNIT) for o in opts) for opts in self.table.values())
        best = np.zeros(cells + 1)  # best[c]: least error of the layers so far in c units
        self.picks = []
        for options in self.table.values():
            new = np.full(cells + 1, np.inf)
            pick = np.zeros(cells + 1, np.int16)
            for i, option in enumerate(options):
                cost = math.ceil(option.nbytes / UNIT)
                shifted = np.full(cells + 1, np.inf)
                shifted[cost:] = best[: cells + 1 - cost] + option.error
                better = shifted < new
                new[better], pick[better] = shifted[better], i
            best = new
            self.picks.append(pick)
        self.best = best

    def plan(self, budget: int) -> dict[str, Choice] | None:
        """Each layer's choice with the least predicted error in ``budget`` payload bytes."""
        cell = min(budget // UNIT, len(self.best) - 1)
        if cell < 0 or not np.isfinite(self.best[cell]):
            return None
        choices = {}
        for (role, options), pick in zip(
            reversed(self.table.items()), reversed(self.picks), strict=True
        ):
            option = options[pick[cell]]
            choices[role] = option.choice
            cell -= math.ceil(option.nbytes / UNIT)
        return dict(reversed(choices.items()))

    def cost(self, choices: dict[str, Choice]) -> tuple[int, float]:
        """Planned payload bytes and predicted error of ``choices``."""
        found = [
            next(o for o in self.table[role] if o.choice == choice)
            for role, choice in choices.items()
        ]
        return sum(o.nbytes for o in found), sum(o.error for o in found)

    def largest(self) -> int:
        """The smallest budget that buys the plan of least error."""
        finite = np.flatnonzero(np.isfinite(self.best))
        return int(finite[np.argmin(self.best[finite])]) * UNIT

    def frontier(self, points: int = 200) -> list[tuple[int, float]]:
        """(payload bytes, least predicted error) along the budgets, for plots."""
        finite = np.flatnonzero(np.isfinite(self.best))
        cells = np.unique(np.geomspace(finite[0] or 1, finite[-1], points).astype(int))
        return [(int(c) * UNIT, float(self.best[c])) for c in cells if np.isfinite(self.best[c])]


def apply_plan(
    model: nn.Module, images: torch.Tensor, choices: dict[str, Choice], *, progress: bool = True
) -> dict[str, LayerProblem]:
    """Compress ``model`` in place layer after layer with ``choices`` (OBS, each layer against
    its inputs through the layers compressed before it); returns each layer's problem."""
    densities = {role: choice.density for role, choice in choices.items()}
    bits = {role: choice.bits for role, choice in choices.items()}
    return reconstruct(model, images, densities, bits, progress=progress)


def shrink_layer(
    model: nn.Module,
    role: str,
    problem: LayerProblem,
    choice: Choice,
    excess: int,
    dtype: str,
    gap_bits: int | None = None,
) -> Choice:
    """Prune ``role`` further against the same inputs until its record is at least ``excess``
    bytes smaller (a last adjustment when a file overshoots its budget); returns its choice."""
    if excess <= 0:
        return choice
    module = layer_roles(model)[role]
    shared = module.parametrizations.weight[0]
    kept = shared.codes.count_nonzero().item()
    size = record_bytes(shared.codes.cpu(), len(shared.centroids) + 1, dtype, gap_bits)
    target, keep = size - excess, choice.density
    while size > target and kept:
        kept = max(0, kept - math.ceil(1.1 * (size - target) * kept / size))  # bytes ~ weights
        keep = kept / module.weight.numel()
        with single_thread():
            w, centroids = problem.share(problem.prune(keep), choice.bits)
        size = record_bytes(problem.codes(w, centroids), 1 << choice.bits, dtype, gap_bits)
    problem.apply(module, w, centroids)
    return Choice(choice.bits, round(keep, 6))


def encode(model: nn.Module, keys: list[str], meta: dict, dtype: str, gap_bits: int | None = None):
    """The ``.sqz`` bytes and records of a model whose layers are shared (left as they are:
    baking a deep copy would strip the parametrization class the original shares), its
    tensors in the order of the plain model's state-dict ``keys`` (the header's size depends
    on it)."""
    modules = dict(model.named_modules())
    state = {}
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if ".parametrizations.weight." not in key:
                state[key] = value.cpu().numpy()
            elif key.endswith(".parametrizations.weight.original"):
                name = key.removesuffix(".parametrizations.weight.original")
                state[f"{name}.weight"] = modules[name].weight.cpu().numpy()
    state = {key: state[key] for key in keys}
    return container.pack(state, meta, codebooks(model), dtype=dtype, gap_bits=gap_bits)


def smallest_file(model: nn.Module, meta: dict, dtype: str) -> int:
    """Bytes of the file with every weight pruned: the container's fixed overhead (header,
    metadata, biases, empty records, checksum); no budget below it can be met."""
    state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    books = {}
    for name, module in model.named_modules():
        if module in layer_roles(model).values():
            state[f"{name}.weight"] = np.zeros_like(state[f"{name}.weight"])
            books[f"{name}.weight"] = np.zeros(2, np.float32)
    data, _ = container.pack(state, meta, books, dtype=dtype)
    return len(data)


def heldout_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict:
    """Top-1/top-5 of ``model`` on cached images."""
    logits = _forward(model, images).numpy()
    k = min(5, logits.shape[1])
    result = topk_accuracy(logits, labels.numpy(), (1, k))
    return {"top1": result["top1"], "top5": result[f"top{k}"], "n": len(labels)}
