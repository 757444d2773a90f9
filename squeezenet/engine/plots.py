"""Training curves, confusion matrix and the comparison bar chart (matplotlib, Agg backend)."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from ..io import atomic_write_bytes  # noqa: E402


def _save(fig, path: Path) -> None:
    """Write the figure as a PNG atomically and close it; rendered in memory first, so that a
    failed write is an ``OSError`` of ours (``OutputError``) whatever the PNG writer does."""
    png = io.BytesIO()
    try:
        fig.savefig(png, dpi=110, format="png")
    finally:
        plt.close(fig)
    atomic_write_bytes(path, png.getvalue())


def plot_curves(history: list[dict], path: Path) -> None:
    """Loss and top-1 per epoch, train and validation."""
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for split in ("train", "val"):
        ax_loss.plot(epochs, [h[f"{split}_loss"] for h in history], marker="o", label=split)
        ax_acc.plot(epochs, [100 * h[f"{split}_top1"] for h in history], marker="o", label=split)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="top-1 (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    _save(fig, path)


def plot_confusion(confusion: np.ndarray, classes: list[str], path: Path) -> None:
    """Row-normalised confusion matrix (rows: true class, columns: prediction)."""
    n = len(classes)
    rates = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    side = min(4 + 0.45 * n, 30)
    fig, ax = plt.subplots(figsize=(side, side * 0.85))
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046)
    if n <= 40:
        ax.set_xticks(range(n), classes, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(n), classes, fontsize=8)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if confusion[i, j]:
                    color = "white" if rates[i, j] > 0.5 else "black"
                    text = int(confusion[i, j])
                    ax.text(j, i, text, ha="center", va="center", fontsize=7, color=color)
    ax.set(xlabel="predicted", ylabel="true", title="validation confusion (counts, row-normalised)")
    fig.tight_layout()
    _save(fig, path)


def plot_compare(rows: list[dict], columns: dict[str, str], path: Path) -> None:
    """One bar chart per metric (``columns``: key -> title), one bar per architecture."""
    names = [r["arch"] for r in rows]
    n_rows = -(-len(columns) // 3)
    fig, axes = plt.subplots(n_rows, 3, figsize=(11, 3.6 * n_rows), squeeze=False)
    for ax in axes.flat[len(columns) :]:
        ax.set_visible(False)
    for ax, (key, title) in zip(axes.flat, columns.items(), strict=False):
        values = [r[key] for r in rows]
        bars = ax.bar(names, values, color=plt.cm.tab10(np.arange(len(rows))))
        ax.bar_label(bars, fmt="%.3g", fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.tick_params(axis="x", labelrotation=45, labelsize=7)
    fig.tight_layout()
    _save(fig, path)
