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

from contextlib import contextmanager
from dataclasses import dataclass

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


class Calibration:
    """Calibration images walked through a model block by block, for layers' input Hessians.

    SqueezeNet is a chain (``features``' children, then the head), so the inputs of a block
    are kept and each layer's ``H`` costs a forward of its own block, not of everything before
    it. Layers must be asked for in data-flow order; the blocks before them run (with their
    weights as they are then, compressed or not) when they are passed. A model that is not
    such a chain (checked against its own forward) is one block: each layer then costs a
    forward of the prefix before it.
    """

    def __init__(self, model: nn.Module, images: torch.Tensor, batch_size: int = 32) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        self.inputs = [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
        self.blocks: list = [model]
        features, head = getattr(model, "features", None), getattr(model, "forward_head", None)
        if isinstance(features, nn.Sequential) and callable(head):
            chain = [*features, head]
            with torch.inference_mode():
                x = self._batch(0)[:2]
                expected = model(x)
                for block in chain:
                    x = block(x)
            if x.shape == expected.shape and torch.allclose(x, expected, atol=1e-5):
                self.blocks = chain
        self.position = 0  # the block whose inputs self.inputs holds

    def _batch(self, i: int) -> torch.Tensor:
        return self.inputs[i].to(self.device).float()

    def _block_of(self, module: nn.Module) -> int:
        for i, block in enumerate(self.blocks):
            if not isinstance(block, nn.Module) or any(m is module for m in block.modules()):
                return i
        raise ValueError("the module is not part of the model")

    def outputs(self, count: int) -> torch.Tensor:
        """The model's outputs for the first ``count`` images, run on from the cached inputs
        of the current block (the blocks before it are not run again)."""
        outputs, seen = [], 0
        with torch.inference_mode():
            for i in range(len(self.inputs)):
                if seen >= count:
                    break
                x = self._batch(i)
                for block in self.blocks[self.position :]:
                    x = block(x)
                outputs.append(x.cpu())
                seen += len(x)
        return torch.cat(outputs)[:count]

    def hessians(self, modules: list[nn.Module]) -> list[torch.Tensor]:
        """``Σ X Xᵀ`` (float64) of each module's input columns; the modules must be in one
        block and must not feed each other (e.g. a Fire module's two expand layers)."""
        index = self._block_of(modules[0])
        with torch.inference_mode():
            while self.position < index:
                block = self.blocks[self.position]
                self.inputs = [block(self._batch(i)) for i in range(len(self.inputs))]
                self.position += 1
        block = self.blocks[index]
        hessians: list = [None] * len(modules)
        pending: set[int] = set()

        def hook(i: int, module: nn.Module):
            def capture(_, inputs):
                cols = _columns(module, inputs[0].float())
                hessians[i] = cols.T @ cols if hessians[i] is None else hessians[i] + cols.T @ cols
                pending.discard(i)
                if not pending:
                    raise _Stop

            return capture

        handles = [m.register_forward_pre_hook(hook(i, m)) for i, m in enumerate(modules)]
        try:
            with torch.inference_mode():
                for i in range(len(self.inputs)):
                    pending.update(range(len(modules)))
                    try:
                        block(self._batch(i))
                    except _Stop:
                        pass
        finally:
            for handle in handles:
                handle.remove()
        return [h.cpu() for h in hessians]


def sibling_groups(roles: dict[str, nn.Module]) -> list[list[str]]:
    """Roles in data-flow order, a Fire module's expand layers together (same input)."""
    groups: list[list[str]] = []
    for role in roles:
        if groups and ".expand" in role and ".expand" in groups[-1][0]:
            if role.split(".")[0] == groups[-1][0].split(".")[0]:
                groups[-1].append(role)
                continue
        groups.append([role])
    return groups


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


@dataclass
class LayerProblem:
    """A layer's weight matrix with its bias as the last column, columns in act-order (by
    decreasing input energy, GPTQ's), and the rows of ``H⁻¹`` the OBS updates read."""

    w: torch.Tensor  # (outputs, columns + 1) float64
    zero: torch.Tensor  # weights pruned before (they stay pruned)
    order: torch.Tensor  # act-order column -> original column
    hessian: torch.Tensor  # H in act-order
    u: torch.Tensor

    @classmethod
    def of(cls, module: nn.Module, hessian: torch.Tensor, damp: float = 0.01) -> LayerProblem:
        weight = module.weight.detach().cpu()
        bias = module.bias.detach().cpu() if module.bias is not None else None
        bias = bias if bias is not None else weight.new_zeros(weight.shape[0])
        w = torch.cat([weight.reshape(weight.shape[0], -1), bias[:, None]], 1).double()
        zero = torch.cat([w[:, :-1] == 0, torch.zeros_like(w[:, :1], dtype=torch.bool)], 1)
        columns = len(hessian) - 1
        diagonal = hessian.diagonal()[:-1]
        order = torch.cat([diagonal.argsort(descending=True), torch.tensor([columns])])
        ordered = hessian[order][:, order]
        u = _inverse_cholesky(ordered, damp)
        return cls(w[:, order], zero[:, order], order, ordered, u)

    def prune(self, keep: float | None) -> torch.Tensor:
        """The weights pruned to density ``keep`` (None: only the zeros they have)."""

        def unpruned(i: int, column: torch.Tensor) -> torch.Tensor:
            return torch.where(self.zero[:, i], 0.0, column)

        return _sweep(self.w, self.u, unpruned, keep)

    def share(self, w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Pruned weights ``w`` rounded to ``2**bits - 1`` k-means centroids of its nonzero
        ones, the error pushed forward; returns them and the centroids (sorted)."""
        return self.share_widths(w, [bits])[0]

    def share_widths(self, w: torch.Tensor, widths: list[int]) -> list[tuple]:
        """``share`` at several bit widths in one sweep: rows are independent in OBS, so the
        copies are stacked, each group of rows rounded to its own codebook (shifted apart by
        ``spread`` so that one sorted array holds them all)."""
        kept = w[:, :-1] != 0
        books = [
            torch.from_numpy(kmeans_1d(w[:, :-1][kept].numpy(), (1 << b) - 1)[0]) for b in widths
        ]  # sorted: 1-D k-means keeps its initialisation's order
        spread = 8 * float(w[:, :-1].abs().max()) + 1.0
        rows = len(w)
        shift = (torch.arange(len(widths), dtype=torch.float64) * spread).repeat_interleave(rows)
        codebook = torch.cat([b.double() + i * spread for i, b in enumerate(books)])
        stacked_kept = kept.repeat(len(widths), 1)

        def to_centroids(i: int, column: torch.Tensor) -> torch.Tensor:
            rounded = codebook[_nearest(codebook, column + shift)] - shift
            return torch.where(stacked_kept[:, i], rounded, 0.0)

        shared = _sweep(w.repeat(len(widths), 1), self.u, to_centroids, None)
        return [(shared[i * rows : (i + 1) * rows], book) for i, book in enumerate(books)]

    def error(self, w: torch.Tensor) -> float:
        """``‖(W - w) X‖²`` summed over the calibration inputs: the output error ``w`` adds."""
        delta = self.w - w
        return float(((delta @ self.hessian) * delta).sum())

    def codes(self, w: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
        """Codes (0: pruned, i: centroid i - 1) of shared weights ``w``, in the original order."""
        codes = _nearest(centroids.double(), w[:, :-1]) + 1
        return torch.where(w[:, :-1] != 0, codes, 0)[:, self.order[:-1].argsort()]

    def apply(self, module: nn.Module, w: torch.Tensor, centroids: torch.Tensor) -> None:
        """Set ``module``'s bias from ``w`` and share its weight as ``[0, *centroids][codes]``
        (a SharedWeight parametrization: only centroids train next)."""
        if module.bias is not None:  # (without one, the share of the error it took is lost)
            bias = w[:, -1].float().to(module.bias.device)
            module.bias.data.copy_(bias)
        share(module, centroids, self.codes(w, centroids).reshape(module.weight.shape))


def compress_layer(
    module: nn.Module, hessian: torch.Tensor, keep: float | None, bits: int, damp: float = 0.01
) -> LayerProblem:
    """Prune ``module`` to density ``keep`` (None: only its zeros), share its weights at
    ``bits``, and adjust its bias, keeping its output on the inputs summarised by ``hessian``
    close to the original. Returns the problem (to compress the layer again differently)."""
    problem = LayerProblem.of(module, hessian, damp)
    w, centroids = problem.share(problem.prune(keep), bits)
    problem.apply(module, w, centroids)
    return problem


def reconstruct(
    model: nn.Module,
    images: torch.Tensor,
    densities: dict[str, float],
    bits: int | dict[str, int],
    *,
    progress: bool = True,
) -> dict[str, LayerProblem]:
    """Prune and weight-share every layer of ``model`` in data-flow order (see module doc);
    ``bits`` is one width for all layers or one per role. Returns each layer's problem."""
    bake(model)
    model.eval()
    roles = layer_roles(model)
    calibration = Calibration(model, images)
    label = f"{bits}-bit" if isinstance(bits, int) else "mixed-bit"
    bar = tqdm(total=len(roles), desc=f"{label} OBS", disable=not progress)
    problems = {}
    for group in sibling_groups(roles):
        hessians = calibration.hessians([roles[role] for role in group])
        for role, hessian in zip(group, hessians, strict=True):
            module = roles[role]
            target = densities.get(role, 1.0)
            keep_zeros = target >= density(module.weight) - 1e-3  # prune nothing new
            width = bits if isinstance(bits, int) else bits[role]
            with single_thread():
                keep = None if keep_zeros else target
                problems[role] = compress_layer(module, hessian, keep, width)
            bar.update()
    bar.close()
    return problems


@contextmanager
def single_thread():
    """Run the column-by-column OBS sweeps on one thread: their many small operations gain
    nothing from a second, and on a busy machine each one waits for the slower thread (up to
    6x slower per layer)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
