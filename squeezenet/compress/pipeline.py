"""Deep Compression end to end: prune, quantize, fine-tune by distillation, Huffman-code.

Two ways to prune and share weights (``method``):

* ``obs`` (the default when there are images): for each bit width, every layer in turn is
  pruned and weight-shared against its real inputs, the error pushed onto the weights not yet
  fixed (``reconstruct``: SparseGPT / GPTQ style, about a minute on a CPU).
* ``magnitude`` (Han et al.): prune once by magnitude (iteratively, fine-tuning between steps;
  skipped when the profile keeps the model's own zeros), then k-means per layer.

Either way the centroids are then fine-tuned by distillation, a ``.sqz`` file is written, and
the file itself, as decoded by ``load_model``, is evaluated.

With a byte budget (``target_bytes``) or an accuracy budget (``max_drop``) the bits and density
of every layer are searched instead (``search``): measured layer sensitivities, a knapsack
over the bytes, and real evaluations of a few allocations on a held-out split of ``data``.
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
from ..io import atomic_write_bytes
from ..weights.formats import sqz as container
from ..weights.load import load_model, save_model
from .distill import Cache, cache_images, distill
from .kmeans import codebooks, quantize
from .prune import bake, density, layer_roles, prune, resolve_profile, schedule
from .reconstruct import reconstruct
from .search import (
    BITS,
    DENSITIES,
    EMPTY,
    Choice,
    Knapsack,
    apply_plan,
    encode,
    heldout_accuracy,
    sensitivities,
    shrink_layer,
    smallest_file,
)

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
    target_bytes: int | None = None  # the most accurate file of at most this many bytes
    max_drop: float | None = None  # the smallest file within this many points (held out)
    holdout: int = 500  # images of data held out for the search's decisions
    search_bits: tuple[int, ...] = BITS  # bit widths a layer may get in a search
    search_densities: tuple[float, ...] = DENSITIES  # fractions of its own density
    search_steps: int = 6  # real evaluations of the bisection for max_drop


@dataclass
class Result:
    """One written ``.sqz`` file."""

    bits: int | None  # None: searched per layer (``choices``)
    path: Path
    size: int
    records: list[container.Record]
    accuracy: dict | None = None
    choices: dict[str, Choice] | None = None


@dataclass
class Candidate:
    """An allocation the search compressed for real and evaluated on the held-out split."""

    choices: dict[str, Choice]
    planned: int  # payload bytes the knapsack planned
    predicted: float  # its predicted KL divergence of the logits
    size: int = 0  # bytes of its file
    accuracy: dict | None = None


@dataclass
class Search:
    """What a budget search measured: the held-out split, the predicted frontier
    (payload bytes, KL divergence), the candidates tried and the one written."""

    target_bytes: int | None
    max_drop: float | None
    calibration: int
    holdout: dict  # the original's accuracy on the held-out split
    overhead: int  # bytes of the file with every weight pruned
    frontier: list[tuple[int, float]]
    candidates: list[Candidate] = field(default_factory=list)
    chosen: Candidate | None = None


@dataclass
class Report:
    weights: str
    original_size: int  # the model in float32 (4 bytes per parameter)
    densities: dict[str, float]
    before: dict | None = None
    results: list[Result] = field(default_factory=list)
    seconds: float = 0.0
    search: Search | None = None


def output_paths(output: Path, bits: tuple[int, ...]) -> list[Path]:
    """``OUT.sqz`` for one bit width, ``OUT-<b>bit.sqz`` for each of several."""
    if len(bits) == 1:
        return [output]
    return [output.with_name(f"{output.stem}-{b}bit{output.suffix}") for b in bits]


def _meta(model: nn.Module, options: Options, bits: int | None) -> dict:
    """The model's metadata, without the ImageNet class list (load_model restores it)."""
    meta = model.weights_info.to_meta()
    default = imagenet_classes()
    if default and meta["class_ids"] == default[0] and meta["classes"] == default[1]:
        meta["classes"] = meta["class_ids"] = None
    if bits is None:  # (not N itself: the fixed overhead must not depend on its digits)
        search = "target-bytes" if options.target_bytes is not None else "max-drop"
        meta["compression"] = {"bits": "per layer", "search": search}
    else:
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


def _fine_tune(
    model: nn.Module,
    cache: Cache,
    options: Options,
    desc: str,
    *,
    epochs: float | None = None,
    lr: float | None = None,
    seed: int | None = None,
) -> None:
    """Distil ``cache``'s teacher outputs into ``model`` with the options' settings (epochs, rate
    and seed of the centroids' fine-tuning unless given)."""
    distill(
        model,
        cache,
        epochs=options.epochs if epochs is None else epochs,
        lr=options.lr if lr is None else lr,
        temperature=options.temperature,
        label_weight=options.label_weight,
        batch_size=options.batch_size,
        seed=options.seed if seed is None else seed,
        progress=options.progress,
        desc=desc,
    )


def prune_model(model: nn.Module, densities: dict, cache: Cache | None, options: Options) -> None:
    """Iterative magnitude pruning to ``densities``, fine-tuning after each step."""
    steps = schedule(densities, options.prune_steps)
    for i, step in enumerate(steps, start=1):
        prune(model, step)
        if cache is not None:
            _fine_tune(
                model,
                cache,
                options,
                f"pruning step {i}/{len(steps)}",
                epochs=options.prune_epochs,
                lr=options.prune_lr,
                seed=options.seed + i,
            )
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
        _fine_tune(model, cache, options, f"{bits}-bit centroids")
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
    if options.target_bytes is not None or options.max_drop is not None:
        _check_search(options)
    return options


def _check_search(options: Options) -> None:
    if options.target_bytes is not None and options.max_drop is not None:
        raise SqueezeNetError("give --target-bytes or --max-drop, not both")
    if options.data is None:
        raise SqueezeNetError("a --target-bytes or --max-drop search needs images (--data)")
    if options.method != "obs":
        raise SqueezeNetError(
            f"a --target-bytes or --max-drop search prunes with obs, not {options.method}"
        )
    if options.max_drop is not None and options.max_drop < 0:
        raise SqueezeNetError(f"--max-drop must be at least 0 points, got {options.max_drop}")
    if not all(2 <= b <= 8 for b in options.search_bits):
        raise SqueezeNetError(f"a search gives layers 2 to 8 bits, got {options.search_bits}")
    if min(options.holdout, options.search_steps) < 1:
        raise SqueezeNetError("--holdout and --search-steps must be at least 1")


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
    searching = options.target_bytes is not None or options.max_drop is not None
    if searching:
        floor = smallest_file(student, _meta(student, options, None), options.dtype)
        if options.target_bytes is not None and options.target_bytes < floor:
            raise SqueezeNetError(
                f"--target-bytes {options.target_bytes:,}: below the {floor:,} bytes of "
                f"{Path(weights).name} with every weight pruned (header, biases, checksum)"
            )
    if options.eval_data is not None:
        _log(options, f"evaluating the original on {options.eval_data}")
        report.before = _evaluate(teacher, options)
    if searching:
        report.results.append(_search(student, teacher, output, options, report, floor))
    else:
        report.results += _each_bit_width(student, teacher, output, options, densities)
    report.seconds = time.time() - start
    return report


def _each_bit_width(
    student: nn.Module, teacher: nn.Module, output: Path, options: Options, densities: dict
) -> list[Result]:
    """One file per bit width, from one pruned model (saved beside the output for --resume)."""
    fine_tuning = options.epochs or (options.method == "magnitude" and options.prune_epochs)
    count = options.images if fine_tuning else 0
    if options.method == "obs":
        count = max(count, options.calibration)
    cache = None
    if options.data is not None and count:
        cache = cache_images(
            options.data,
            teacher,
            count,
            seed=options.seed,
            batch_size=options.batch_size,
            progress=options.progress,
        )
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
    results = []
    for bits, path in zip(options.bits, output_paths(output, options.bits), strict=True):
        model = copy.deepcopy(student)
        books = quantize_model(model, bits, cache, options, densities)
        state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
        records = container.write(
            path,
            state,
            _meta(student, options, bits),
            books,
            dtype=options.dtype,
            gap_bits=options.gap_bits,
        )
        result = Result(bits, path, path.stat().st_size, records)
        if options.eval_data is not None:
            _log(options, f"evaluating {path}")
            result.accuracy = _evaluate(_load(path, options), options)
        results.append(result)
    return results


@dataclass
class Attempt:
    """A plan compressed for real: its candidate (measured on the held-out split) and file."""

    candidate: Candidate
    data: bytes  # the ``.sqz`` file
    records: list[container.Record]

    @property
    def score(self) -> tuple:
        """Higher is better: held-out top-1, then top-5, then the smaller file."""
        accuracy = self.candidate.accuracy
        return accuracy["top1"], accuracy["top5"], -self.candidate.size


def _search(
    student: nn.Module,
    teacher: nn.Module,
    output: Path,
    options: Options,
    report: Report,
    floor: int,
) -> Result:
    """Per-layer bits and densities for the budget (see ``search``); writes ``output``."""
    trial = _Trial(student, teacher, options, floor)
    report.search = trial.search
    if options.target_bytes is not None:
        best = _most_accurate(trial, options.target_bytes - trial.search.overhead)
    else:
        best = _smallest_within(trial, floor - trial.search.overhead, options)
    trial.search.chosen = best.candidate
    atomic_write_bytes(output, best.data)
    result = Result(None, output, len(best.data), best.records, choices=best.candidate.choices)
    if options.eval_data is not None:
        _log(options, f"evaluating {output}")
        result.accuracy = _evaluate(_load(output, options), options)
    return result


class _Trial:
    """What every attempt of a search shares: the images (calibration, fine-tuning, held out),
    the measured sensitivities and their knapsack, and the ``Search`` record."""

    def __init__(self, student: nn.Module, teacher: nn.Module, options: Options, floor: int):
        extra = options.images if options.epochs else 0  # fine-tuning images beyond calibration
        cache = cache_images(
            options.data,
            teacher,
            options.calibration + options.holdout + extra,
            seed=options.seed,
            batch_size=options.batch_size,
            progress=options.progress,
        )
        if len(cache) <= options.calibration:
            raise SqueezeNetError(
                f"{options.data}: {len(cache)} images, fewer than --calibration "
                f"{options.calibration} plus a held-out split"
            )
        # One seeded permutation: the first images calibrate, the last decide (held out), and
        # fine-tuning sees all but the held-out ones.
        split = len(cache) - min(options.holdout, len(cache) - options.calibration)
        self.tune, decide = cache[:split], cache[split:]
        self.calibration, self.held = cache.images[: options.calibration], decide.images
        self.labels = decide.labels
        if (self.labels < 0).any():  # no labels in the model's classes: agreement with it
            self.labels = decide.targets.float().argmax(1)
        self.table = sensitivities(
            student,
            self.calibration,
            bits=options.search_bits,
            densities=options.search_densities,
            dtype=options.dtype,
            gap_bits=options.gap_bits,
            progress=options.progress,
        )
        self.knapsack = Knapsack(self.table)
        empty = sum(
            next(o.nbytes for o in opts if o.choice == EMPTY) for opts in self.table.values()
        )
        self.student, self.options = student, options
        self.meta, self.keys = _meta(student, options, None), list(student.state_dict())
        self.search = Search(
            options.target_bytes,
            options.max_drop,
            len(self.calibration),
            heldout_accuracy(teacher, self.held, self.labels),
            floor - empty,
            self.knapsack.frontier(),
        )

    def attempt(self, choices: dict[str, Choice]) -> Attempt:
        """Compress the student by ``choices`` (pruned further if over the byte budget),
        fine-tune the centroids if asked, and measure the file on the held-out split."""
        options = self.options
        planned, predicted = self.knapsack.cost(choices)
        model = copy.deepcopy(self.student)
        problems = apply_plan(model, self.calibration, choices, progress=options.progress)
        data, records = self._encode(model)
        # over budget (the header, the layers' real inputs): prune the last layers further
        for role in reversed(choices):
            while options.target_bytes is not None and len(data) > options.target_bytes:
                if choices[role].density == 0:
                    break
                over = len(data) - options.target_bytes
                choices[role] = shrink_layer(
                    model,
                    role,
                    problems[role],
                    choices[role],
                    over,
                    options.dtype,
                    options.gap_bits,
                )
                data, records = self._encode(model)
        if options.epochs:  # the centroids (and biases) against the original's outputs
            _fine_tune(model, self.tune, options, "fine-tuning the centroids")
            data, records = self._encode(model)
        candidate = Candidate(choices, planned, predicted, len(data))
        candidate.accuracy = accuracy = heldout_accuracy(model, self.held, self.labels)
        self.search.candidates.append(candidate)
        top1, top5 = accuracy["top1"], accuracy["top5"]
        _log(options, f"{len(data):,} bytes: held-out top-1 {top1:.2%}, top-5 {top5:.2%}")
        return Attempt(candidate, data, records)

    def _encode(self, model: nn.Module) -> tuple[bytes, list[container.Record]]:
        options = self.options
        return encode(model, self.keys, self.meta, options.dtype, options.gap_bits)


def _most_accurate(trial: _Trial, budget: int) -> Attempt:
    """The better on the held-out split of two plans within ``budget``: bits and densities
    per layer, and bits alone at each layer's own density (tried when its predicted error is
    within twice the first's). Every layer emptied when nothing else fits."""
    table, knapsack = trial.table, trial.knapsack
    own = {role: options[0].choice.density for role, options in table.items()}
    bits_only = Knapsack(table, allowed=lambda role, c: c.density in (own[role], 0.0))
    plans = [p for p in (knapsack.plan(budget), bits_only.plan(budget)) if p is not None]
    plans = plans or [dict.fromkeys(table, EMPTY)]  # rounding to UNIT left no other plan
    predicted = [knapsack.cost(p)[1] for p in plans]
    tried: list[Attempt] = []
    for plan, error in zip(plans, predicted, strict=True):
        if plan not in [t.candidate.choices for t in tried] and error <= 2 * min(predicted):
            tried.append(trial.attempt(dict(plan)))
    return max(tried, key=lambda t: t.score)


def _smallest_within(trial: _Trial, smallest: int, options: Options) -> Attempt:
    """Bisection over the budget (geometric, between an eighth of the least-error plan's bytes
    and those bytes) for the smallest file whose held-out top-1 and top-5 are within
    ``max_drop`` points of the original's; the least-error plan if none is."""
    reference, knapsack = trial.search.holdout, trial.knapsack

    def within(attempt: Attempt) -> bool:
        accuracy = attempt.candidate.accuracy
        return all(100 * (reference[k] - accuracy[k]) <= options.max_drop for k in ("top1", "top5"))

    top = knapsack.largest()
    low, high, best = max(smallest, top // 8), top, None
    for _ in range(options.search_steps):
        middle = int((low * high) ** 0.5)
        attempt = trial.attempt(knapsack.plan(middle) or dict.fromkeys(knapsack.table, EMPTY))
        if within(attempt):
            high, best = middle, attempt
        else:
            low = middle
    if best is None:
        best = trial.attempt(knapsack.plan(top))
        if not within(best):
            message = f"no file is within {options.max_drop} points on the held-out split"
            _log(options, f"{message}; writing the most accurate")
    return best
