"""Fine-tuning without ImageNet: distillation from the uncompressed model on any image folder.

A fixed subset of the folder is decoded and preprocessed once and kept in memory as float16,
with the teacher's logits beside it, so each fine-tuning pass costs only the student's
forward and backward. Labels are used too when the folder has them in the model's classes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Subset
from tqdm import tqdm

from ..data.datasets import (
    SPLIT_FILE,
    ImageDataset,
    labelled_folder,
    list_images,
    read_split,
    split_datasets,
)
from ..errors import SqueezeNetError
from ..inference.pipeline import loader_for


@dataclass
class Cache:
    """Preprocessed images (N, 3, H, W) float16, labels (N,) (-1: none), teacher logits."""

    images: torch.Tensor
    labels: torch.Tensor
    targets: torch.Tensor

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, part: slice) -> Cache:
        return Cache(self.images[part], self.labels[part], self.targets[part])


def _dataset(folder: Path, teacher: nn.Module) -> tuple[ImageDataset, bool]:
    """The folder as a dataset, and whether its labels are indices of the teacher's classes."""
    info = teacher.weights_info
    if (folder / SPLIT_FILE).is_file():  # a training run: its training share, never its held-out
        dataset = split_datasets(read_split(folder), info.preprocess, info.preprocess.resize)[0]
        return dataset, dataset.classes == info.class_ids
    try:
        dataset = labelled_folder(
            folder, info.preprocess, info.class_ids, draft_size=info.preprocess.resize
        )
        return dataset, dataset.classes == info.class_ids
    except SqueezeNetError:  # no labels.csv and no class folders: plain images
        files = list_images([folder])
        return ImageDataset(files, None, info.preprocess, draft_size=info.preprocess.resize), False


def cache_images(
    folder: str | Path,
    teacher: nn.Module,
    count: int,
    *,
    seed: int = 0,
    batch_size: int = 32,
    workers: int | None = None,
    progress: bool = True,
) -> Cache:
    """Decode a random subset of ``count`` images of ``folder`` and the teacher's logits."""
    dataset, labelled = _dataset(Path(folder), teacher)
    device = next(teacher.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(len(dataset), generator=generator)[:count].tolist()
    images, labels, targets = [], [], []
    bar = tqdm(total=len(chosen), desc="caching images", unit="img", disable=not progress)
    with torch.inference_mode():
        for batch in loader_for(Subset(dataset, chosen), batch_size, workers):
            if batch is None:
                continue
            x, y, _, _ = batch
            images.append(x.half())
            labels.append(y if labelled else torch.full_like(y, -1))
            targets.append(teacher(x.to(device)).half().cpu())
            bar.update(len(x))
    bar.close()
    if not images:
        raise SqueezeNetError(f"{folder}: no readable images to fine-tune on")
    return Cache(torch.cat(images), torch.cat(labels), torch.cat(targets))


def distill_loss(
    logits: torch.Tensor, cache: Cache, index: torch.Tensor, temperature: float, label_weight: float
) -> torch.Tensor:
    """KL divergence to the teacher's softened outputs (times T^2), plus cross-entropy on labels."""
    soft = F.log_softmax(cache.targets[index].to(logits.device).float() / temperature, 1)
    log_probs = F.log_softmax(logits / temperature, 1)
    loss = F.kl_div(log_probs, soft, reduction="batchmean", log_target=True) * temperature**2
    labels = cache.labels[index].to(logits.device)
    if label_weight and (labels >= 0).any():
        loss = loss + label_weight * F.cross_entropy(logits[labels >= 0], labels[labels >= 0])
    return loss


def distill(
    student: nn.Module,
    cache: Cache,
    *,
    epochs: float,
    lr: float,
    temperature: float = 1.0,
    label_weight: float = 0.5,
    batch_size: int = 32,
    seed: int = 0,
    progress: bool = True,
    desc: str = "fine-tuning",
) -> float:
    """Adam with a cosine schedule over ``epochs`` passes of the cache; returns the last loss.

    Only parameters with ``requires_grad`` train; the model stays in eval mode (no dropout).
    """
    params = [p for p in student.parameters() if p.requires_grad]
    steps = math.ceil(epochs * len(cache) / batch_size)
    if steps == 0 or not params:
        return float("nan")
    optimizer = torch.optim.Adam(params, lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    generator = torch.Generator().manual_seed(seed)
    order = torch.cat(
        [torch.randperm(len(cache), generator=generator) for _ in range(math.ceil(epochs) + 1)]
    )
    student.eval()
    device = next(student.parameters()).device
    images = cache.images.to(device)  # a copy on an accelerator, the same tensor on the CPU
    average = None
    bar = tqdm(range(steps), desc=desc, unit="step", disable=not progress)
    for step in bar:
        index = order[step * batch_size : (step + 1) * batch_size]
        x = images[index.to(device)].float().contiguous(memory_format=torch.channels_last)
        loss = distill_loss(student(x), cache, index, temperature, label_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        average = loss.item() if average is None else 0.9 * average + 0.1 * loss.item()
        bar.set_postfix(loss=f"{average:.4f}")
    return float(average)
