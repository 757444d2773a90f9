"""Data-aware pruning and weight sharing, layer by layer (SparseGPT / GPTQ style).

Magnitude pruning and nearest-centroid rounding ignore what a layer's inputs look like. Here
each layer, in data-flow order, sees its real inputs ``X`` (calibration images through the
already-compressed layers before it) and its weights are chosen to keep ``W X`` close to the
original layer's output: with ``H = X Xᵀ``, weights are removed (pruned, then rounded to a
shared centroid) one input column at a time, and the error each removal causes is pushed
onto the columns not yet fixed through the inverse Hessian (Optimal Brain Surgeon). The bias
is the last column: never rounded, it absorbs what is left of the mean error. Which weights
to prune is chosen the same way, block by block, by the OBS saliency ``w² / [H⁻¹]ᵢᵢ²``.

References: Frantar & Alistarh, SparseGPT (2023); Frantar et al., GPTQ (2023); Hassibi &
Stork, Optimal Brain Surgeon (1993).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .kmeans import kmeans_1d, share
from .prune import bake, density, layer_roles

BLOCK = 128  # columns pruned and rounded together (SparseGPT's block)


class _Stop(Exception):
    """Raised by the capture hook once a layer's input has been seen (skips the rest)."""


def _columns(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as rows of its weight matrix's columns, plus a column of ones."""
    if isinstance(module, nn.Conv2d):
        x = F.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride)
        x = x.transpose(1, 2).reshape(-1, x.shape[1])
    else:
        x = x.reshape(-1, x.shape[-1])
    return torch.cat([x, x.new_ones(len(x), 1)], 1).double()


def input_hessian(
    model: nn.Module, module: nn.Module, images: torch.Tensor, batch_size: int = 32
) -> torch.Tensor:
    """``Σ X Xᵀ`` over the calibration images of ``module``'s input columns (float64)."""
    hessian, device = None, next(model.parameters()).device

    def capture(_, inputs):
        nonlocal hessian
        cols = _columns(module, inputs[0].float())
        hessian = cols.T @ cols if hessian is None else hessian + cols.T @ cols
        raise _Stop

    handle = module.register_forward_pre_hook(capture)
    try:
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                try:
                    model(images[start : start + batch_size].to(device).float())
                except _Stop:
                    pass
    finally:
        handle.remove()
    return hessian.cpu()


def _inverse_cholesky(hessian: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of the damped ``H⁻¹`` (the rows OBS updates read)."""
    h = hessian.clone()
    dead = h.diagonal() == 0
    h[dead, dead] = 1.0
    h.diagonal().add_(damp * h.diagonal().mean())
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(h))
    return torch.linalg.cholesky(inverse, upper=True)


def _sweep(w: torch.Tensor, u: torch.Tensor, round_column, density: float | None) -> torch.Tensor:
    """One OBS pass over the weight columns of ``w`` (rows: outputs; last column: bias).

    ``round_column(i, column)`` gives column i's new values; with ``density`` set, each block
    first marks the ``1 - density`` of its weights with the smallest saliency as pruned.
    """
    w = w.clone()
    columns = w.shape[1] - 1  # the bias column only receives updates
    pruned = torch.zeros_like(w, dtype=torch.bool)
    for i1 in range(0, columns, BLOCK):
        i2 = min(i1 + BLOCK, columns)
        block, u1 = w[:, i1:i2].clone(), u[i1:i2, i1:i2]
        errors = torch.zeros_like(block)
        if density is not None and density < 1.0:
            saliency = block**2 / u1.diagonal() ** 2
            cut = int(saliency.numel() * (1 - density))
            if cut:
                threshold = saliency.flatten().kthvalue(cut).values
                pruned[:, i1:i2] = saliency <= threshold
        for i in range(i2 - i1):
            column = block[:, i]
            rounded = round_column(i1 + i, column)
            rounded = torch.where(pruned[:, i1 + i], 0.0, rounded)
            error = (column - rounded) / u1[i, i]
            block[:, i + 1 :] -= error[:, None] * u1[i, i + 1 :][None]
            block[:, i] = rounded
            errors[:, i] = error
        w[:, i1:i2] = block
        w[:, i2:] -= errors @ u[i1:i2, i2:]
    return w


def _nearest(codebook: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Index of each value's nearest entry of a sorted codebook."""
    index = torch.bucketize(values.contiguous(), (codebook[1:] + codebook[:-1]) / 2)
    return index.clamp_(0, len(codebook) - 1)


def compress_layer(
    module: nn.Module, hessian: torch.Tensor, keep: float | None, bits: int, damp: float = 0.01
) -> None:
    """Prune ``module`` to density ``keep`` (None: only its zeros), share its weights at
    ``bits``, and adjust its bias, keeping its output on the inputs summarised by ``hessian``
    close to the original. Leaves a SharedWeight parametrization: only centroids train next."""
    weight = module.weight.detach()
    shape, device = weight.shape, weight.device
    bias = module.bias.detach() if module.bias is not None else weight.new_zeros(shape[0])
    w = torch.cat([weight.reshape(shape[0], -1), bias[:, None]], 1).double().cpu()
    zero = torch.cat([w[:, :-1] == 0, torch.zeros_like(w[:, :1], dtype=torch.bool)], 1)
    # columns by decreasing input energy (GPTQ's act-order), the bias last
    columns = len(hessian) - 1
    order = torch.cat([hessian.diagonal()[:-1].argsort(descending=True), torch.tensor([columns])])
    u = _inverse_cholesky(hessian[order][:, order], damp)
    w, zero = w[:, order], zero[:, order]

    def unpruned(i: int, column: torch.Tensor) -> torch.Tensor:
        return torch.where(zero[:, i], 0.0, column)  # what was pruned before stays pruned

    w = _sweep(w, u, unpruned, keep)
    kept = w[:, :-1] != 0
    centroids = torch.from_numpy(kmeans_1d(w[:, :-1][kept].numpy(), (1 << bits) - 1)[0])
    codebook = centroids.double()  # sorted: 1-D k-means keeps the linear initialisation's order

    def to_centroids(i: int, column: torch.Tensor) -> torch.Tensor:
        return torch.where(kept[:, i], codebook[_nearest(codebook, column)], 0.0)

    w = _sweep(w, u, to_centroids, None)[:, order.argsort()]
    kept = kept[:, order[:-1].argsort()]
    if module.bias is not None:  # (without one, the share of the error it took is lost)
        module.bias.data.copy_(w[:, -1].float().to(device))
    codes = torch.where(kept, _nearest(codebook, w[:, :-1]) + 1, 0).reshape(shape)
    share(module, centroids, codes)


def reconstruct(
    model: nn.Module,
    images: torch.Tensor,
    densities: dict[str, float],
    bits: int,
    *,
    progress: bool = True,
) -> None:
    """Prune and weight-share every layer of ``model`` in data-flow order (see module doc)."""
    bake(model)
    model.eval()
    roles = layer_roles(model)
    for role, module in tqdm(roles.items(), desc=f"{bits}-bit OBS", disable=not progress):
        target = densities.get(role, 1.0)
        keep_zeros = target >= density(module.weight) - 1e-3  # prune nothing new
        hessian = input_hessian(model, module, images)
        compress_layer(module, hessian, None if keep_zeros else target, bits)
