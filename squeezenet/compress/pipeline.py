"""Deep Compression end to end: prune, quantize, fine-tune by distillation, Huffman-code.

Two ways to prune and share weights (``method``):

* ``obs`` (the default when there are images): for each bit width, every layer in turn is
  pruned and weight-shared against its real inputs, the error pushed onto the weights not yet
  fixed (``reconstruct``: SparseGPT / GPTQ style, about a minute on a CPU).
* ``magnitude`` (Han et al.): prune once by magnitude (iteratively, fine-tuning between steps;
  skipped when the profile keeps the model's own zeros), then k-means per layer.

Either way the centroids are then fine-tuned by distillation, a ``.sqz`` file is written, and
the file itself, as decoded by ``load_model``, is evaluated.
"""

from __future__ import annotations

import copy
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from ..data.datasets import imagenet_classes
from ..errors import SqueezeNetError
from ..inference.pipeline import evaluate
from ..weights.formats import sqz as container
from ..weights.load import load_model, save_model
from .distill import Cache, cache_images, distill
from .kmeans import codebooks, quantize
from .prune import bake, density, layer_roles, prune, resolve_profile, schedule
from .reconstruct import reconstruct

METHODS = ("auto", "obs", "magnitude")


@dataclass
class Options:
    """Settings of a compression run (the CLI's options, with the same defaults)."""

    bits: tuple[int, ...] = (6,)
    sparsity: str = "auto"
    method: str = "auto"  # obs when there are images (data), else magnitude
    calibration: int = 256  # images whose layer inputs obs reconstructs
    data: Path | None = None  # images to fine-tune on; None: no fine-tuning
    eval_data: Path | None = None  # labelled folder for top-1/top-5 before and after
    teacher: str | None = None  # distillation teacher; default: the weights themselves
    images: int = 1000  # fine-tuning images kept in memory
    prune_steps: int = 3
    prune_epochs: float = 1.0  # passes over the images after each pruning step
    prune_lr: float = 1e-4
    epochs: float | None = None  # passes to fine-tune the centroids (None: 0 for obs, 2 else)
    lr: float = 5e-4
    temperature: float = 1.0
    label_weight: float = 0.5
    batch_size: int = 32
    dtype: str = "float16"
    gap_bits: int | None = None  # None: the smallest per tensor
    resume: bool = False  # reuse OUT.pruned.safetensors from an earlier run
    seed: int = 0
    device: str = "cpu"
    progress: bool = True


@dataclass
class Result:
    """One written ``.sqz`` file."""

    bits: int
    path: Path
    size: int
    records: list[container.Record]
    accuracy: dict | None = None


@dataclass
class Report:
    weights: str
    original_size: int  # the model in float32 (4 bytes per parameter)
    densities: dict[str, float]
    before: dict | None = None
    results: list[Result] = field(default_factory=list)
    seconds: float = 0.0


def output_paths(output: Path, bits: tuple[int, ...]) -> list[Path]:
    """``OUT.sqz`` for one bit width, ``OUT-<b>bit.sqz`` for each of several."""
    if len(bits) == 1:
        return [output]
    return [output.with_name(f"{output.stem}-{b}bit{output.suffix}") for b in bits]


def _meta(model: nn.Module, options: Options, bits: int) -> dict:
    """The model's metadata, without the ImageNet class list (load_model restores it)."""
    meta = model.weights_info.to_meta()
    default = imagenet_classes()
    if default and meta["class_ids"] == default[0] and meta["classes"] == default[1]:
        meta["classes"] = meta["class_ids"] = None
    meta["compression"] = {"bits": bits, "sparsity": options.sparsity}
    return meta


def _load(spec: str | Path, options: Options) -> nn.Module:
    model = load_model(spec)
    return model.to(options.device).to(memory_format=torch.channels_last)


def _evaluate(model: nn.Module, options: Options) -> dict:
    def forward(x: torch.Tensor) -> torch.Tensor:
        return model(x.to(options.device)).cpu()

    return evaluate(model, options.eval_data, forward=forward, progress=options.progress)


def _log(options: Options, message: str) -> None:
    if options.progress:
        print(message, file=sys.stderr, flush=True)


def prune_model(model: nn.Module, densities: dict, cache: Cache | None, options: Options) -> None:
    """Iterative magnitude pruning to ``densities``, fine-tuning after each step."""
    steps = schedule(densities, options.prune_steps)
    for i, step in enumerate(steps, start=1):
        prune(model, step)
        if cache is not None:
            distill(
                model, cache, epochs=options.prune_epochs, lr=options.prune_lr,
                temperature=options.temperature, label_weight=options.label_weight,
                batch_size=options.batch_size, seed=options.seed + i,
                progress=options.progress, desc=f"pruning step {i}/{len(steps)}",
            )  # fmt: skip
    bake(model)


def quantize_model(
    model: nn.Module, bits: int, cache: Cache | None, options: Options, densities: dict
) -> dict:
    """Share weights at ``bits`` (obs: pruning to ``densities`` too), fine-tune the centroids;
    returns the codebooks."""
    if options.method == "obs":
        images = cache.images[: options.calibration]
        reconstruct(model, images, densities, bits, progress=options.progress)
    else:
        quantize(model, bits)
    if cache is not None:
        distill(
            model, cache, epochs=options.epochs, lr=options.lr,
            temperature=options.temperature, label_weight=options.label_weight,
            batch_size=options.batch_size, seed=options.seed,
            progress=options.progress, desc=f"{bits}-bit centroids",
        )  # fmt: skip
    books = codebooks(model)
    bake(model)
    return books


def _settle(options: Options) -> Options:
    """``options`` with the method and epochs chosen; a SqueezeNetError for impossible ones."""
    if not all(1 <= b <= 8 for b in options.bits):
        raise SqueezeNetError(f"bits must be between 1 and 8, got {list(options.bits)}")
    if options.method not in METHODS:
        raise SqueezeNetError(f"unknown method {options.method!r}; choose from {METHODS}")
    if options.method == "auto":
        options = replace(options, method="obs" if options.data else "magnitude")
    if options.method == "obs" and options.data is None:
        raise SqueezeNetError("--method obs needs images (--data) to see each layer's inputs")
    if options.epochs is None:  # after obs, distilling on a few classes cost accuracy
        options = replace(options, epochs=0.0 if options.method == "obs" else 2.0)
    return options


def compress(weights: str | Path, output: str | Path, options: Options) -> Report:
    """Compress ``weights`` into ``output`` (one file per bit width); see the module doc."""
    start = time.time()
    output = Path(output)
    if not output.parent.is_dir():
        raise SqueezeNetError(f"{output.parent}: no such folder for the output")
    options = _settle(options)
    student = _load(weights, options)
    teacher = _load(options.teacher, options) if options.teacher else copy.deepcopy(student)
    if teacher.weights_info.num_classes != student.weights_info.num_classes:
        raise SqueezeNetError(f"{options.teacher}: the teacher's classes differ from {weights}'s")
    densities = resolve_profile(options.sparsity, student)
    float32_size = 4 * sum(v.numel() for v in student.state_dict().values())
    report = Report(str(weights), float32_size, densities)
    if options.eval_data is not None:
        _log(options, f"evaluating the original on {options.eval_data}")
        report.before = _evaluate(teacher, options)
    fine_tuning = options.epochs or (options.method == "magnitude" and options.prune_epochs)
    count = options.images if fine_tuning else 0
    if options.method == "obs":
        count = max(count, options.calibration)
    cache = None
    if options.data is not None and count:
        cache = cache_images(
            options.data, teacher, count, seed=options.seed,
            batch_size=options.batch_size, progress=options.progress,
        )  # fmt: skip
    checkpoint = output.with_suffix(".pruned.safetensors")
    roles = layer_roles(student)
    if options.resume and checkpoint.exists():
        _log(options, f"resuming from the pruned model {checkpoint}")
        student = _load(checkpoint, options)
    elif options.method == "magnitude" and any(
        d < density(roles[r].weight) - 1e-3 for r, d in densities.items()
    ):
        prune_model(student, densities, cache, options)
        save_model(student, checkpoint)
    for bits, path in zip(options.bits, output_paths(output, options.bits), strict=True):
        model = copy.deepcopy(student)
        books = quantize_model(model, bits, cache, options, densities)
        state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
        records = container.write(
            path, state, _meta(student, options, bits), books,
            dtype=options.dtype, gap_bits=options.gap_bits,
        )  # fmt: skip
        result = Result(bits, path, path.stat().st_size, records)
        if options.eval_data is not None:
            _log(options, f"evaluating {path}")
            result.accuracy = _evaluate(_load(path, options), options)
        report.results.append(result)
    report.seconds = time.time() - start
    return report
