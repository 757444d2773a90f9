"""Datasets: ``labels.csv`` folders, ImageFolder trees, loose image paths, class lists.

Every dataset yields ``(tensor, label, index)``; an image that cannot be decoded yields
``None`` so a long run skips and counts it instead of crashing (see ``collate_skipping``).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from ..errors import SqueezeNetError
from .transforms import load_image

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}


def shared_dir() -> Path:
    """The project's shared data folder: $SQUEEZENET_SHARED, else ../shared beside the repo."""
    if "SQUEEZENET_SHARED" in os.environ:
        return Path(os.environ["SQUEEZENET_SHARED"])
    return Path(__file__).resolve().parents[3] / "shared"


def squeezenet_home() -> Path:
    """Weights cache: $SQUEEZENET_HOME, default ~/.cache/squeezenet."""
    return Path(os.environ.get("SQUEEZENET_HOME", Path.home() / ".cache" / "squeezenet"))


def imagenet_classes() -> tuple[list[str], list[str]] | None:
    """(wnids, names) of the 1,000 ImageNet classes from ``imagenet_classes.tsv``.

    Looked up in $SQUEEZENET_HOME, then in the shared data folder; None when absent.
    """
    for path in (
        squeezenet_home() / "imagenet_classes.tsv",
        shared_dir() / "data/imagenet_classes.tsv",
    ):
        if path.is_file():
            rows = list(csv.reader(path.open(encoding="utf-8"), delimiter="\t"))[1:]
            if len(rows) != 1000:
                raise SqueezeNetError(f"{path}: expected 1000 classes, found {len(rows)}")
            return [r[1] for r in rows], [r[2].split(",")[0] for r in rows]
    return None


def list_images(paths: Iterable[str | Path]) -> list[Path]:
    """Expand files and folders (recursively, sorted) into image paths; error if none exist."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.exists():
            found.append(p)
        else:
            raise SqueezeNetError(f"{p}: no such file or folder")
    if not found:
        raise SqueezeNetError(f"no images found in {', '.join(map(str, paths))}")
    return found


class ImageDataset(Dataset):
    """Images with optional integer labels, decoded and preprocessed on access."""

    def __init__(
        self,
        files: Sequence[Path],
        labels: Sequence[int] | None,
        transform: Callable,
        classes: list[str] | None = None,
        draft_size: int | None = None,
    ) -> None:
        self.files = list(files)
        self.labels = list(labels) if labels is not None else [-1] * len(self.files)
        self.transform = transform
        self.classes = classes
        self.draft_size = draft_size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        try:
            image = load_image(self.files[i], self.draft_size)
        except SqueezeNetError:
            return None
        return self.transform(image), self.labels[i], i


def collate_skipping(batch: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int] | None:
    """Collate the readable samples; also return how many were skipped."""
    good = [b for b in batch if b is not None]
    if not good:
        return None
    x, y, i = default_collate(good)
    return x, y, i, len(batch) - len(good)


def read_labels_csv(root: Path, num_classes: int | None = None) -> tuple[list[Path], list[int]]:
    """The files and labels of ``root/labels.csv``; a malformed or repeated row, or a label
    outside ``[0, num_classes)``, is an error naming its line."""
    path = root / "labels.csv"
    files, labels, lines = [], [], {}
    with path.open(newline="", encoding="utf-8") as f:
        for n, row in enumerate(csv.DictReader(f), start=2):
            try:
                file, label = row["file"], int(row["label"])
            except (KeyError, TypeError, ValueError):
                raise SqueezeNetError(f"{path}:{n}: expected columns file,label") from None
            if file in lines:
                raise SqueezeNetError(f"{path}:{n}: {file} is listed again (line {lines[file]})")
            if label < 0 or (num_classes is not None and label >= num_classes):
                allowed = f"0..{num_classes - 1}" if num_classes else "0 or more"
                raise SqueezeNetError(
                    f"{path}:{n}: label {label} is outside {allowed}"
                    + (f" (the model has {num_classes} classes)" if num_classes else "")
                )
            lines[file] = n
            files.append(root / file)
            labels.append(label)
    if not files:
        raise SqueezeNetError(f"{path}: no rows")
    return files, labels


def scan_image_folder(root: Path) -> tuple[list[str], list[Path], list[int]]:
    """``root/<class>/<image>`` -> (sorted class folder names, files, folder indices)."""
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not classes:
        raise SqueezeNetError(f"{root}: no labels.csv and no class folders")
    files, labels = [], []
    for k, name in enumerate(classes):
        images = sorted(f for f in (root / name).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise SqueezeNetError(f"{root / name}: class folder has no images")
        files += images
        labels += [k] * len(images)
    return classes, files, labels


def labelled_folder(
    root: str | Path,
    transform: Callable,
    classes: list[str] | None = None,
    draft_size=None,
    num_classes: int | None = None,
) -> ImageDataset:
    """A labelled dataset from ``root/labels.csv``, an ImageFolder tree, or a training run
    folder split from a plain class-folder tree (its validation share, from ``split.json``).

    For ImageFolder trees, folder names are mapped through ``classes`` (the model's own class
    names or the ImageNet wnids) when every folder is among them; otherwise folders are
    numbered in sorted order. With ``num_classes`` (the model's), labels outside it and folders
    that only some of ``classes`` match are errors.
    """
    root = Path(root)
    if not root.is_dir():
        raise SqueezeNetError(f"{root}: no such folder")
    if (root / SPLIT_FILE).is_file():  # a training run's folder: its held-out share
        split = read_split(root)
        val = split_datasets(split, transform, draft_size)[1]
        if classes is not None and split["classes"] and set(split["classes"]) <= set(classes):
            lookup = {name: k for k, name in enumerate(classes)}
            val.labels = [lookup[split["classes"][k]] for k in val.labels]
            val.classes = classes
        return val
    if (root / "labels.csv").is_file():
        files, labels = read_labels_csv(root, num_classes)
        return ImageDataset(files, labels, transform, classes, draft_size)
    folders, files, labels = scan_image_folder(root)
    unknown = [name for name in folders if name not in set(classes or ())]
    if num_classes is not None and 0 < len(unknown) < len(folders):
        raise SqueezeNetError(
            f"{root / unknown[0]}: a class folder the model does not know "
            f"({len(unknown)} of {len(folders)} folders are not among its classes)"
        )
    if num_classes is not None and unknown and len(folders) > num_classes:
        raise SqueezeNetError(
            f"{root}: has {len(folders)} class folders, the model has {num_classes} classes"
        )
    if classes is not None and set(folders) <= set(classes):
        lookup = {name: k for k, name in enumerate(classes)}
        labels = [lookup[folders[k]] for k in labels]
        return ImageDataset(files, labels, transform, classes, draft_size)
    return ImageDataset(files, labels, transform, folders, draft_size)


SPLIT_FILE = "split.json"  # in a run folder: the train/val file lists of a split class-folder tree
DEFAULT_VAL_SPLIT = 0.2


def is_split_tree(root: Path) -> bool:
    """Whether ``root`` holds ``train/`` and ``val/`` rather than the classes themselves."""
    return (root / "train").is_dir() and (root / "val").is_dir()


def stratified_split(
    labels: Sequence[int], share: float, seed: int, classes: Sequence[str]
) -> tuple[list[int], list[int]]:
    """Indices (train, val) with ``share`` of each class in val, chosen by a seeded shuffle.

    Every class keeps at least one image on each side, else a SqueezeNetError names it.
    """
    if not 0 < share < 1:
        raise SqueezeNetError(f"--val-split must lie between 0 and 1, not {share:g}")
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    train, val = [], []
    for label in sorted(by_class):
        members = by_class[label]
        n_val = max(1, round(len(members) * share))
        if n_val >= len(members):
            raise SqueezeNetError(
                f"class {classes[label]!r} has {len(members)} image(s): too few to keep one for "
                f"training and one for validation at --val-split {share:g}"
            )
        order = rng.permutation(members).tolist()
        val += order[:n_val]
        train += order[n_val:]
    return sorted(train), sorted(val)


def split_folder(root: Path, share: float, seed: int) -> dict:
    """Split a class-folder tree (or one ``labels.csv`` folder): the content of ``split.json``."""
    if (root / "labels.csv").is_file():
        files, labels = read_labels_csv(root)
        classes = None
        names = [str(k) for k in range(max(labels) + 1)]
    else:
        classes, files, labels = scan_image_folder(root)
        names = classes
    train, val = stratified_split(labels, share, seed, names)
    rows = [[str(f.relative_to(root)), label] for f, label in zip(files, labels, strict=True)]
    return {
        "data": str(root.resolve()),
        "val_split": share,
        "seed": seed,
        "classes": classes,
        "train": [rows[i] for i in train],
        "val": [rows[i] for i in val],
    }


def split_datasets(
    split: dict, transform: Callable, draft_size: int | None = None
) -> tuple[ImageDataset, ImageDataset]:
    """The (train, val) datasets that a ``split.json`` describes."""
    root = Path(split["data"])

    def part(name: str) -> ImageDataset:
        files = [root / f for f, _ in split[name]]
        labels = [label for _, label in split[name]]
        return ImageDataset(files, labels, transform, split["classes"], draft_size)

    return part("train"), part("val")


def read_split(run_dir: Path) -> dict:
    path = run_dir / SPLIT_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SqueezeNetError(f"{path}: cannot read the run's split ({e})") from None


def readable_names(class_ids: list[str]) -> list[str]:
    """ImageNet names for wnid folders, else the folder names themselves."""
    imagenet = imagenet_classes()
    if imagenet and set(class_ids) <= set(imagenet[0]):
        names = dict(zip(*imagenet, strict=True))
        return [names[c] for c in class_ids]
    return list(class_ids)


def train_val_datasets(
    data: str | Path, run_dir: Path, val_split: float | None, seed: int, preprocess, resume: bool
) -> tuple[ImageDataset, ImageDataset, dict | None]:
    """The train and val datasets, labelled consistently, and the split made (if any).

    A tree with ``train/`` and ``val/`` is used as it is; any other class-folder tree (or
    ``labels.csv`` folder) is split: ``val_split`` of each class held out, by a shuffle seeded
    with ``seed``; a ``resume`` reuses the split kept in ``run_dir``.
    """
    root = Path(data)
    if not root.is_dir():
        raise SqueezeNetError(f"{root}: no such folder")
    if is_split_tree(root):
        if val_split is not None:
            raise SqueezeNetError(
                f"{root}: has train/ and val/ already; --val-split is for a tree of class "
                "folders without them"
            )
        train = labelled_folder(root / "train", preprocess)
        val = labelled_folder(root / "val", preprocess, train.classes, draft_size=preprocess.resize)
        if train.classes is not None and val.classes != train.classes:
            extra = sorted(set(val.classes or []) - set(train.classes))
            raise SqueezeNetError(
                f"{root / 'val'}: class folders not in train/: {', '.join(extra)}"
            )
        return train, val, None
    if resume and (run_dir / SPLIT_FILE).is_file():
        split = read_split(run_dir)
    else:
        split = split_folder(root, val_split or DEFAULT_VAL_SPLIT, seed)
    train, val = split_datasets(split, preprocess, draft_size=preprocess.resize)
    return train, val, split
