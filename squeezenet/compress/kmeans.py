"""Trained quantization: per-layer k-means weight sharing, then fine-tuning of the centroids.

With ``bits`` b a layer's codebook has ``2**b`` entries: entry 0 is the fixed value 0.0 of
pruned weights (and of the container's filler entries), the other ``2**b - 1`` are k-means
centroids of the layer's nonzero weights, initialised linearly over [min, max] (Han et al.
found linear initialisation keeps the rare large weights that matter most). During
fine-tuning a weight is ``codebook[code]``, so each centroid receives the summed gradient of
its cluster while masks and assignments stay fixed.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from .prune import bake, layer_roles


def kmeans_1d(values: np.ndarray, k: int, iterations: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Centroids (k,) and the index of each value's centroid, from a linear initialisation.

    One dimension makes each step exact and cheap: the values are sorted once, so a step only
    bisects the k - 1 midpoints into them and sums each cluster's run with a cumulative sum
    (O(k log n), not O(n)). Empty clusters keep their initial centroid.
    """
    values = np.asarray(values, np.float64).reshape(-1)
    centroids = np.linspace(values.min(), values.max(), k) if len(values) else np.zeros(k)
    ordered = np.sort(values)
    prefix = np.concatenate([[0.0], np.cumsum(ordered)])
    for _ in range(iterations):
        # a value equal to a midpoint belongs to the lower cluster (as searchsorted below)
        bounds = np.searchsorted(ordered, (centroids[1:] + centroids[:-1]) / 2, side="right")
        bounds = np.concatenate([[0], bounds, [len(ordered)]])
        counts = np.diff(bounds)
        sums = prefix[bounds[1:]] - prefix[bounds[:-1]]
        updated = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
        if np.allclose(updated, centroids, rtol=0, atol=1e-10):
            break
        centroids = updated
    assignment = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, values)
    return centroids.astype(np.float32), assignment


class SharedWeight(nn.Module):
    """Parametrization ``weight = [0, *centroids][codes]``; only the centroids train."""

    def __init__(self, centroids: torch.Tensor, codes: torch.Tensor) -> None:
        super().__init__()
        self.centroids = nn.Parameter(centroids)
        self.register_buffer("codes", codes)

    def codebook(self) -> torch.Tensor:
        return torch.cat([self.centroids.new_zeros(1), self.centroids])

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return self.codebook()[self.codes]


def quantize(model: nn.Module, bits: int) -> None:
    """Share the nonzero weights of every conv/linear layer among ``2**bits - 1`` centroids."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, not {bits}")
    bake(model)
    for module in layer_roles(model).values():
        weight = module.weight.detach()
        nonzero = weight != 0
        centroids, assignment = kmeans_1d(weight[nonzero].cpu().numpy(), (1 << bits) - 1)
        codes = torch.zeros(weight.shape, dtype=torch.long, device=weight.device)
        codes[nonzero] = torch.from_numpy(assignment).to(weight.device) + 1
        share(module, torch.from_numpy(centroids), codes)


def share(module: nn.Module, centroids: torch.Tensor, codes: torch.Tensor) -> None:
    """Make ``module.weight`` ``[0, *centroids][codes]``, with only the centroids trainable."""
    if parametrize.is_parametrized(module, "weight"):  # shared again: replace, not stack
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    device = module.weight.device
    shared = SharedWeight(centroids.to(device), codes.to(device))
    parametrize.register_parametrization(module, "weight", shared, unsafe=True)
    module.parametrizations.weight.original.requires_grad_(False)


def codebooks(model: nn.Module) -> dict[str, np.ndarray]:
    """State-dict key -> codebook (float32, entry 0 is 0.0) of every quantized layer."""
    found = {}
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module, "weight"):
            shared = module.parametrizations.weight[0]
            if isinstance(shared, SharedWeight):
                found[f"{name}.weight"] = shared.codebook().detach().cpu().numpy()
    return found
