"""``save_model``: write a model in the format its suffix names, only if it keeps its predictions.

A format without metadata makes its reader assume what the file cannot say: a ``.pth`` is read
with the torchvision preset and the architecture its keys suggest (conv10 unpadded, a global
average); a ``.caffemodel`` with Caffe's preset, conv10 padded by 1 when conv1 is 7x7 (v1.0)
and a plain SqueezeNet; a ``.npz`` as the old Chainer net with Caffe's preset; a 1000-class
file gets ImageNet's class names, any other none. So every file is read back here as
``load_model`` reads it (no prototxt, no override) and compared with the model: the network as
built, the weights, the input preprocessing and the class names. A difference in the input
normalisation alone (channel order, scale, mean, std) is folded into conv1 where that is exact
(``fold``); any other difference refuses the file in one line naming what the format cannot
hold, and nothing is written.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from ..data.transforms import PRESETS, Preprocess
from ..errors import FormatError, OutputError, SqueezeNetError
from ..io import atomic_output
from . import formats
from .build import assign, build, describe
from .fold import fold_input, same_input, same_pixels, why_not_foldable
from .formats import Contents, Hints
from .info import WeightsInfo
from .layers import model_layers


@dataclasses.dataclass
class _ReadBack:
    """A written file as ``load_model`` would see it: the model built (weights not yet in)."""

    contents: Contents
    meta: dict
    model: nn.Module
    info: WeightsInfo


def save_model(model: nn.Module, path: str | Path, **overrides) -> list[str]:
    """Write ``model``; the suffix picks the format (``formats.writer``; see the module doc).

    ``overrides`` replace ``weights_info`` metadata keys. Returns what was changed to fit the
    format (e.g. the input normalisation folded into conv1), [] for most files. Raises
    ``FormatError`` naming what the format cannot hold, leaving no file.
    """
    path = Path(path)
    module = formats.writer(path)
    info = getattr(model, "weights_info", None)
    meta = {**info.to_meta(), **overrides} if info is not None else dict(overrides)
    source = WeightsInfo.from_meta(meta) if info is not None else None
    with atomic_output(path) as tmp:
        return _write_checked(module, model, source, meta, tmp, path)


def _write_checked(
    module: ModuleType,
    model: nn.Module,
    source: WeightsInfo | None,
    meta: dict,
    tmp: Path,
    path: Path,
) -> list[str]:
    back = _write_and_read(module, model, meta, tmp, path)
    notes: list[str] = []
    target = back.info.preprocess
    if (
        source is not None
        and not same_input(source.preprocess, target)
        and why_not_foldable(model, source.preprocess, target) is None
    ):
        model = fold_input(model, source.preprocess, target)
        source = dataclasses.replace(source, preprocess=target)
        meta = {**meta, "preprocess": target.to_dict()}
        back = _write_and_read(module, model, meta, tmp, path)
        notes.append(f"input normalisation folded into conv1 for {_preprocessing(target)}")
    lost = _lost(model, source, back)
    if lost:
        what = " and ".join(item for item, _ in lost)
        assumed = ", ".join(value for _, value in lost)
        raise FormatError(
            f"{path}: a {path.suffix.lower()} cannot hold {what} (read back: {assumed}); "
            "write .safetensors"
        )
    try:
        assign(back.model, back.contents, back.meta["arch"], str(path))
    except SqueezeNetError as e:
        raise FormatError(_here(e, tmp, path)) from None
    _check_weights(model, back.model, path)
    return notes


def _write_and_read(
    module: ModuleType, model: nn.Module, meta: dict, tmp: Path, path: Path
) -> _ReadBack:
    """Write ``model`` to ``tmp``, then read it back without hints and build what it holds."""
    state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    try:
        module.save(tmp, Contents(state=state, layers=model_layers(model), meta=meta))
    except OutputError:  # the disk, not the format: atomic_output names the file
        raise
    except SqueezeNetError as e:
        raise FormatError(_here(e, tmp, path)) from None
    try:
        contents = module.load(tmp, Hints())
        back_meta = describe(contents)
        built = build(back_meta)
    except (SqueezeNetError, TypeError, ValueError) as e:
        arch = meta.get("arch") or type(model).__name__
        raise FormatError(
            f"{path}: a {path.suffix.lower()} cannot hold {arch} (read back: "
            f"{_here(e, tmp, path)}); write .safetensors"
        ) from None
    return _ReadBack(contents, back_meta, built, WeightsInfo.from_meta(back_meta))


def _here(error: Exception, tmp: Path, path: Path) -> str:
    """The error's message about the temporary file, as one about ``path``."""
    return str(error).replace(str(tmp), str(path)).splitlines()[0]


def _lost(model: nn.Module, source: WeightsInfo | None, back: _ReadBack) -> list[tuple[str, str]]:
    """(what the model has, what the file reads back as) for every difference that matters."""
    lost: list[tuple[str, str]] = []
    if _layout(model) != _layout(back.model):
        lost += _architecture(model, source, back)
    if source is None:
        return lost
    if not same_input(source.preprocess, back.info.preprocess):
        item = _preprocessing(source.preprocess)
        if same_pixels(source.preprocess, back.info.preprocess):  # say why it was not folded
            reason = why_not_foldable(model, source.preprocess, back.info.preprocess)
            item += f" (not foldable: {reason})"
        lost.append((item, _preprocessing(back.info.preprocess)))
    if source.classes is not None and (
        source.classes != back.info.classes
        or (source.class_ids is not None and source.class_ids != back.info.class_ids)
    ):
        names = "ImageNet's names" if back.info.classes else "no names"
        lost.append((f"the {len(source.classes)} class names", names))
    return lost


def _layout(model: nn.Module) -> str:
    """Every module, size, padding and pooling window; dropout rates aside (eval ignores them)."""
    return re.sub(r"Dropout\(p=[^)]*\)", "Dropout", repr(model))


_DETAILS = {
    "classifier_padding": lambda v: f"conv10's padding of {v or 0}",
    "pool_window": lambda v: f"a {v}x{v} average window" if v else "a global average",
    "bypass": lambda v: f"the {v} bypass" if v else "no bypass",
    "dense_head": lambda v: "a dense head" if v else "no dense head",
}


def _architecture(
    model: nn.Module, source: WeightsInfo | None, back: _ReadBack
) -> list[tuple[str, str]]:
    arch = source.arch if source is not None else type(model).__name__
    if arch != back.info.arch:
        return [(arch, back.info.arch)]
    ours, theirs = (source.model_kwargs if source else {}), back.info.model_kwargs
    lost = []
    for key in sorted(set(ours) | set(theirs)):
        a, b = ours.get(key) or None, theirs.get(key) or None  # absent, 0, False: the default
        if a != b:
            detail = _DETAILS.get(key, lambda v, key=key: f"{key}={v!r}")
            lost.append((detail(a), detail(b)))
    return lost or [(f"{arch}'s layout", f"{back.info.arch} as its reader builds it")]


def _preprocessing(p: Preprocess) -> str:
    for name, preset in PRESETS.items():
        if same_input(p, preset):
            return f"{'Caffe' if name == 'caffe' else name} preprocessing"
    order = "BGR" if p.bgr else "RGB"
    return f"preprocessing {p.name!r} ({order}, crop {p.crop})"


def _check_weights(model: nn.Module, back: nn.Module, path: Path) -> None:
    """Every parameter and statistic read back equals the model's, in the dtype that
    ``load_model`` gives (float32: a float64 model is read back rounded, whatever the file)."""
    theirs = back.state_dict()
    for key, ours in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        read = theirs.get(key)
        if read is None or not torch.allclose(  # exactly equal, NaN where the model has NaN
            ours.detach().cpu().to(read.dtype), read, rtol=0, atol=0, equal_nan=True
        ):
            raise FormatError(
                f"{path}: {key} does not read back unchanged from a {path.suffix.lower()}; "
                "write .safetensors"
            )
