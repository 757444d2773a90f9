"""Run a model over images: batched predict and top-k evaluate, decoding in worker processes.

The workers decode and resize each image to uint8 pixels (``Preprocess.pixels``); the main
process turns each batch into the network's float input in one pass (``Preprocess.normalize``),
so a worker sends 4x fewer bytes and does no float arithmetic.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..data.datasets import ImageDataset, collate_skipping, labelled_folder
from ..errors import SqueezeNetError

Forward = Callable[[torch.Tensor], torch.Tensor]


def default_workers() -> int:
    """Decoding processes: one core left to the network's threads, at most 4.

    A decoder on the network's last core preempts one of its threads, and the threads wait for
    each other at every layer: on 2 cores one worker ran ``evaluate`` about 1.3x faster than two.
    """
    return max(1, min(4, (os.cpu_count() or 1) - 1))


def loader_for(dataset: ImageDataset, batch_size: int, workers: int | None) -> DataLoader:
    workers = default_workers() if workers is None else workers
    return DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate_skipping,
        persistent_workers=False,
        prefetch_factor=4 if workers else None,
    )


def batch_logits(
    forward: Forward,
    dataset: ImageDataset,
    *,
    normalize: Callable[[torch.Tensor], torch.Tensor] | None = None,
    batch_size: int = 32,
    workers: int | None = None,
) -> Iterator[tuple[int, int, np.ndarray, np.ndarray | None]]:
    """Batch by batch, in dataset order: ``(start, stop, index, logits)``, the positions of the
    batch, the indices among them that were decoded and their logits (None when none was).

    ``normalize`` makes each collated batch the network's input: ``Preprocess.normalize`` for a
    dataset of ``Preprocess.pixels``; None for a dataset that yields it already.
    """
    start = 0
    with torch.inference_mode():
        for batch in loader_for(dataset, batch_size, workers):
            stop = min(start + batch_size, len(dataset))
            if batch is None:  # every image of this batch failed
                yield start, stop, np.zeros(0, np.int64), None
            else:
                x, _, index, _ = batch
                out = forward(normalize(x) if normalize else x).float().numpy()
                yield start, stop, index.numpy(), out
            start = stop


def run(
    forward: Forward,
    dataset: ImageDataset,
    *,
    normalize: Callable[[torch.Tensor], torch.Tensor] | None = None,
    batch_size: int = 32,
    workers: int | None = None,
    progress: bool = True,
    desc: str = "images",
) -> tuple[np.ndarray, list[int]]:
    """Logits for every readable image, in dataset order; also the indices that were skipped."""
    logits = np.zeros((len(dataset), 0), np.float32)
    seen = np.zeros(len(dataset), bool)
    bar = tqdm(total=len(dataset), desc=desc, unit="img", disable=not progress, leave=False)
    batches = batch_logits(
        forward, dataset, normalize=normalize, batch_size=batch_size, workers=workers
    )
    for start, stop, index, out in batches:
        if out is not None:
            if logits.shape[1] == 0:
                logits = np.zeros((len(dataset), out.shape[1]), np.float32)
            logits[index] = out
            seen[index] = True
        bar.update(stop - start)
    bar.close()
    return logits, [i for i in range(len(dataset)) if not seen[i]]


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, ks: Sequence[int] = (1, 5)) -> dict:
    """Fraction of rows whose label is among the k largest logits, for each k."""
    order = np.argsort(-logits, axis=1)
    return {f"top{k}": float((order[:, :k] == labels[:, None]).any(1).mean()) for k in ks}


def evaluate(
    model: torch.nn.Module,
    data: str | Path,
    *,
    forward: Forward | None = None,
    batch_size: int = 32,
    workers: int | None = None,
    progress: bool = True,
) -> dict:
    """Top-1/top-5 of ``model`` on a labels.csv folder or an ImageFolder tree.

    Returns ``{"top1", "top5", "n", "skipped"}`` with accuracies as fractions in 0..1 (``top5``
    is top-k for k = min(5, classes)); images that cannot be decoded are skipped and counted.
    """
    info = model.weights_info
    preprocess = info.preprocess
    dataset = labelled_folder(
        data, preprocess.pixels, info.class_ids, preprocess.resize, num_classes=info.num_classes
    )
    if info.class_ids is None and dataset.classes and len(dataset.classes) != info.num_classes:
        raise SqueezeNetError(
            f"{data}: has {len(dataset.classes)} classes, the model has {info.num_classes} "
            "outputs and no class names to map folders by"
        )
    options = {"batch_size": batch_size, "workers": workers, "progress": progress}
    logits, skipped = run(forward or model, dataset, normalize=preprocess.normalize, **options)
    keep = np.setdiff1d(np.arange(len(dataset)), skipped)
    if keep.size == 0:
        raise SqueezeNetError(f"{data}: none of the {len(dataset)} images could be decoded")
    labels = np.asarray(dataset.labels)
    k = min(5, logits.shape[1])
    accuracy = topk_accuracy(logits[keep], labels[keep], (1, k))
    top1, top5 = accuracy["top1"], accuracy[f"top{k}"]  # "top5" whatever the class count
    return {"top1": top1, "top5": top5, "n": int(keep.size), "skipped": len(skipped)}


def predict(
    model: torch.nn.Module,
    files: Sequence[Path],
    *,
    topk: int = 5,
    forward: Forward | None = None,
    batch_size: int = 32,
    workers: int | None = None,
    progress: bool = True,
) -> tuple[list[dict], np.ndarray]:
    """Top-k classes for each image: ``[{"file", "top": [{"index", "label", "prob"}]}]``.

    Also returns the (N, classes) float32 logits in input order. An unreadable image raises
    ``SqueezeNetError`` naming it (predict is asked about specific files).
    """
    info = model.weights_info
    preprocess = info.preprocess
    dataset = ImageDataset(files, None, preprocess.pixels, draft_size=preprocess.resize)
    options = {"batch_size": batch_size, "workers": workers, "progress": progress}
    logits, skipped = run(forward or model, dataset, normalize=preprocess.normalize, **options)
    if skipped:
        from ..data.transforms import load_image

        load_image(files[skipped[0]])  # raises the decoder's own message for the first bad file
    return [
        {"file": str(f), "top": top_classes(row, info, topk)}
        for f, row in zip(files, logits, strict=True)
    ], logits


def top_classes(logits: np.ndarray, info, topk: int) -> list[dict]:
    """Softmax probabilities of the ``topk`` best classes of one logits row."""
    if not np.isfinite(logits).all():
        raise SqueezeNetError(
            f"{info.source}: the model's output is not finite (NaN or inf); damaged weights?"
        )
    z = logits.astype(np.float64) - logits.max()
    probs = np.exp(z) / np.exp(z).sum()
    best = np.argsort(-probs)[:topk]
    return [{"index": int(i), "label": info.label(int(i)), "prob": float(probs[i])} for i in best]
