"""Train several architectures from scratch, each by its own recipe, then tabulate them.

Every network gets its own recipe (``recipes.py``) and the same epoch budget; ``same_recipe``
gives them all the first one's instead. Columns: float32 size, parameters,
multiply-accumulates per image, validation top-1/top-5 of the final weights, training images/s
(median over epochs), training wall time and inference latency at batch 1 and 20 (median of
timed forwards, on the training device).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..io import atomic_write_bytes
from ..models import build_model
from ..models.stats import model_stats
from .checkpoint import STATE_FILE
from .config import RECIPE_FIELDS, TrainConfig
from .plots import plot_compare
from .recipes import scratch_recipe
from .train import train

COLUMNS = {  # key -> (Markdown header, format)
    "arch": ("arch", "{}"),
    "size_mb": ("size (MB, fp32)", "{:.2f}"),
    "params_m": ("params (M)", "{:.3f}"),
    "gmacs": ("GMACs/image", "{:.3f}"),
    "top1": ("val top-1", "{:.2%}"),
    "top5": ("val top-5", "{:.2%}"),
    "train_img_s": ("train img/s", "{:.0f}"),
    "train_min": ("train time (min)", "{:.1f}"),
    "latency_b1_ms": ("latency b=1 (ms)", "{:.2f}"),
    "latency_b20_ms": ("latency b=20 (ms)", "{:.2f}"),
}
CHART = {
    "size_mb": "size (MB, float32)",
    "params_m": "parameters (M)",
    "gmacs": "GMACs per image",
    "top1": "val top-1",
    "train_img_s": "training images/s",
    "latency_b1_ms": "latency batch 1 (ms)",
}


def latency_ms(
    model: nn.Module, batch: int, size: int, device: torch.device, repeats: int = 20
) -> float:
    """Median milliseconds of one eval-mode forward of a ``batch`` x 3 x size x size input."""
    model.eval()
    x = torch.randn(batch, 3, size, size, device=device).contiguous(
        memory_format=torch.channels_last
    )
    times = []
    with torch.inference_mode():
        for i in range(repeats + 3):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            model(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= 3:  # warm-up forwards are not timed
                times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def compare(archs: list[str], base: TrainConfig, same_recipe: bool = False) -> list[dict]:
    """Train every arch with ``base`` (its ``out`` is the parent folder) and measure each.

    Recipe options left ``None`` in ``base`` come from each arch's own recipe, or with
    ``same_recipe`` from the first arch's. A folder left by an interrupted compare is resumed
    (same settings required).
    """
    out = Path(base.out)
    if same_recipe:
        recipe = scratch_recipe(archs[0])
        shared = {n: getattr(recipe, n) for n in RECIPE_FIELDS if getattr(base, n) is None}
        base = dataclasses.replace(base, **shared)
    rows = []
    for arch in archs:
        cfg = dataclasses.replace(base, arch=arch, out=str(out / arch), weights=None)
        result = train(cfg, resume=(out / arch / STATE_FILE).exists())
        last, info = result.history[-1], result.model.weights_info
        size = info.preprocess.crop
        stats = model_stats(build_model(arch, num_classes=info.num_classes), size)
        device = next(result.model.parameters()).device
        rows.append(
            {
                "arch": arch,
                "size_mb": stats["size_mb"],
                "params_m": stats["params"] / 1e6,
                "gmacs": stats["macs"] / 1e9,
                "top1": last["val_top1"],
                "top5": last["val_top5"],
                "train_img_s": float(np.median([h["train_images_per_s"] for h in result.history])),
                "train_min": last.get("elapsed_s", math.nan) / 60,  # over every resume
                "latency_b1_ms": latency_ms(result.model, 1, size, device),
                "latency_b20_ms": latency_ms(result.model, 20, size, device),
                "image_size": size,
                "epochs": last["epoch"],
                "device": str(device),
                "recipe": {n: getattr(result.config, n) for n in RECIPE_FIELDS},
            }
        )
    if int(os.environ.get("RANK", "0")) == 0:
        write_report(rows, out)
    return rows


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| " + " | ".join(h for h, _ in COLUMNS.values()) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for r in rows:
        lines.append("| " + " | ".join(f.format(r[k]) for k, (_, f) in COLUMNS.items()) + " |")
    return "\n".join(lines) + "\n"


def write_report(rows: list[dict], out: Path) -> None:
    """``compare.md`` (table), ``compare.json`` (all numbers) and ``compare.png`` (bar chart)."""
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (("compare.md", markdown_table(rows)), ("compare.json", json.dumps(rows))):
        atomic_write_bytes(out / name, text.encode())
    plot_compare(rows, CHART, out / "compare.png")
