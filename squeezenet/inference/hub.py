"""Write a Hugging Face Hub-shaped model folder with a model card built from measured facts.

The folder holds ``config.json`` (timm's keys, see ``weights.hub``), ``model.safetensors`` and a
``README.md`` whose YAML header (``library_name``, ``pipeline_tag``, ``license``, ``datasets``,
``model-index``) the Hub and ``huggingface_hub.ModelCard`` read. Every number in the card comes
from the model or from ``evaluate`` runs made here; none is typed by hand.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..errors import SqueezeNetError
from ..io import atomic_write_bytes
from ..models import stats
from ..weights.entries import ENTRIES
from ..weights.hub import CARD, CONFIG, WEIGHTS, config_of
from ..weights.save import save_model
from . import export as targets
from .pipeline import evaluate

# the file each deploy target writes into the folder; --with takes those in export.TARGETS
EXTRA_FILES = {
    "onnx": "model.onnx",
    "pt2": "model.pt2",
    "executorch": "model.pte",
    "ncnn": "model.param",
}


@dataclass
class Evaluation:
    """One ``evaluate`` run: the data set's folder name, top-1/top-5 (fractions), images."""

    dataset: str
    top1: float
    top5: float
    n: int


def save_folder(
    model: nn.Module,
    out: str | Path,
    *,
    evals: list[str | Path] = (),
    extras: list[str] = (),
    progress: bool = True,
) -> list[Evaluation]:
    """Write ``out/`` (config, weights, card, and the ``extras`` deploy targets' files)."""
    try:
        from huggingface_hub import ModelCard  # noqa: F401  (checked before any long work)
    except ImportError:
        raise SqueezeNetError(
            "hub folders need huggingface_hub: pip install 'squeezenet[hub]'"
        ) from None
    unknown = [name for name in extras if name not in EXTRA_FILES or name not in targets.TARGETS]
    if unknown:
        known = ", ".join(n for n in EXTRA_FILES if n in targets.TARGETS)
        raise SqueezeNetError(f"--with {unknown[0]}: not a deploy target; choose from {known}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = [_evaluate(model, data, progress) for data in evals]
    info = model.weights_info
    config = config_of(info, model.num_features)
    atomic_write_bytes(out / CONFIG, json.dumps(config, indent=2).encode())
    save_model(model, out / WEIGHTS)
    written = []
    for name in extras:
        targets.export(model, out / EXTRA_FILES[name], name)
        written += sorted(p.name for p in out.glob(Path(EXTRA_FILES[name]).stem + ".*"))
    card = model_card(model, runs, sorted(set(written) - {CONFIG, WEIGHTS, CARD}), out)
    atomic_write_bytes(out / CARD, card.encode())
    return runs


def _evaluate(model: nn.Module, data: str | Path, progress: bool) -> Evaluation:
    result = evaluate(model, data, progress=progress)
    return Evaluation(Path(data).resolve().name, result["top1"], result["top5"], result["n"])


def model_card(model: nn.Module, runs: list[Evaluation], extra_files: list[str], out: Path) -> str:
    """The README.md: YAML header (with ``model-index`` from ``runs``) and a short body."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    info = model.weights_info
    entry = ENTRIES.get(info.entry) if info.entry else None
    name = out.name
    data = ModelCardData(
        library_name="squeezenet",
        pipeline_tag="image-classification",
        license=(entry.license.lower() if entry else "other"),
        datasets=["imagenet-1k"] if info.num_classes == 1000 else None,
        tags=["image-classification", "squeezenet", info.arch],
        model_name=name,
        eval_results=[
            EvalResult(
                task_type="image-classification",
                dataset_type=run.dataset,
                dataset_name=f"{run.dataset} ({run.n} images)",
                metric_type="accuracy",
                metric_name=f"top-{k}",
                metric_value=value,
            )  # fmt: skip
            for run in runs
            for k, value in ((1, run.top1), (5, run.top5))
        ]
        or None,
    )
    counts = stats.model_stats(model, info.preprocess.crop)
    p = info.preprocess
    lines = [
        f"# {name}",
        "",
        f"`{info.arch}` for image classification, {info.num_classes} classes, written by the "
        "[squeezenet](https://pypi.org/project/squeezenet/) toolkit.",
        "",
        "| | |",
        "|---|---|",
        f"| parameters | {counts['params']:,} |",
        f"| multiply-accumulates | {counts['macs'] / 1e6:,.0f} M at {p.crop}x{p.crop} |",
        f"| `{WEIGHTS}` | {(out / WEIGHTS).stat().st_size:,} bytes |",
        f"| source | {entry.url if entry else info.source or 'trained with squeezenet'} |",
        f"| licence | {entry.license if entry else 'as the source'} |",
        "",
        "## Preprocessing",
        "",
        f"{'Squash to' if p.square_resize else 'Short side to'} {p.resize} px (bilinear), center "
        f"crop {p.crop}, {'BGR' if p.bgr else 'RGB'}, pixel values times {p.scale:g}, minus mean "
        f"{list(p.mean)}, divided by std {list(p.std)} (`{CONFIG}` holds the same in timm's keys).",
        "",
        "## Use",
        "",
        "```python",
        "import squeezenet",
        f'model = squeezenet.load_model("hf-hub:ORG/{name}")  # or the folder\'s path',
        "```",
    ]
    if runs:
        lines += ["", "## Evaluation", "", "| data | images | top-1 | top-5 |", "|---|---|---|---|"]
        lines += [f"| {r.dataset} | {r.n} | {r.top1:.2%} | {r.top5:.2%} |" for r in runs]
    if extra_files:
        lines += ["", "## Files for deployment", ""] + [f"- `{f}`" for f in extra_files]
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n"))
