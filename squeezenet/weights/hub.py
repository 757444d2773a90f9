"""Hugging Face Hub-shaped model folders: ``config.json`` (timm's keys) + ``model.safetensors``.

``config.json`` holds ``architecture``, ``num_classes``, ``num_features`` and ``pretrained_cfg``
with the preprocessing in timm's terms (``input_size``, ``mean``/``std`` on 0-1 RGB values,
``crop_pct``, ``crop_mode``, ``interpolation``, ``label_names``), plus ``model_kwargs`` and
``label_ids``. The preprocessing is read back from those keys alone, so a folder edited by hand
or by another tool means what its config says. ``hf-hub:ORG/NAME[@REV]`` names are fetched
through ``huggingface_hub`` (its cache, ``HF_HUB_OFFLINE`` and token handling).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..data.transforms import Preprocess
from ..errors import FormatError, SqueezeNetError

CONFIG, WEIGHTS, CARD = "config.json", "model.safetensors", "README.md"
PREFIX = "hf-hub:"
INTERPOLATION = "bilinear"  # what data.transforms resizes with


def fetch(spec: str) -> Path:
    """The local folder of ``hf-hub:ORG/NAME[@REV]``, from the Hub or its cache."""
    repo, _, revision = spec.removeprefix(PREFIX).partition("@")
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError
    except ImportError:
        raise SqueezeNetError(
            f"{spec}: reading from the Hub needs huggingface_hub: pip install 'squeezenet[hub]'"
        ) from None
    try:
        folder = snapshot_download(
            repo, revision=revision or None, allow_patterns=[CONFIG, WEIGHTS, CARD]
        )
    except (LocalEntryNotFoundError, HFValidationError) as e:
        raise SqueezeNetError(f"{spec}: {str(e).splitlines()[0]}") from None
    except OSError as e:  # network and HTTP errors (requests' and httpx's derive from OSError)
        raise SqueezeNetError(f"{spec}: cannot fetch from the Hub ({e})") from None
    return Path(folder)


def read_config(folder: Path) -> dict:
    """``config.json`` as ``WeightsInfo.to_meta`` keys; one line for a missing or bad config."""
    path = folder / CONFIG
    if not path.is_file():
        raise FormatError(f"{folder}: no {CONFIG} (a Hub model folder holds {CONFIG} + {WEIGHTS})")
    if not (folder / WEIGHTS).is_file():
        raise FormatError(f"{folder}: no {WEIGHTS} beside {CONFIG}")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
        cfg = config["pretrained_cfg"]
        return {
            "arch": config["architecture"],
            "num_classes": int(config["num_classes"]),
            "model_kwargs": dict(config.get("model_kwargs") or {}),
            "preprocess": preprocess_from_timm(cfg),
            "classes": cfg.get("label_names"),
            "class_ids": config.get("label_ids"),
        }
    except (ValueError, KeyError, TypeError, ZeroDivisionError) as e:
        raise FormatError(f"{path}: not a model config ({type(e).__name__}: {e})") from None


def config_of(info, num_features: int) -> dict:
    """The ``config.json`` of a model with ``weights_info`` ``info``."""
    return {
        "architecture": info.arch,
        "num_classes": info.num_classes,
        "num_features": num_features,
        "model_kwargs": info.model_kwargs,
        "label_ids": info.class_ids,
        "pretrained_cfg": {**preprocess_to_timm(info.preprocess), "label_names": info.classes},
    }


def preprocess_to_timm(p: Preprocess) -> dict:
    """timm's preprocessing keys, mean and std on 0-1 RGB values, and the channel order."""
    order = slice(None, None, -1) if p.bgr else slice(None)
    return {
        "input_size": [3, p.crop, p.crop],
        "interpolation": INTERPOLATION,
        "crop_pct": p.crop / p.resize,
        "crop_mode": "squash" if p.square_resize else "center",
        "mean": [m / (255 * p.scale) for m in p.mean[order]],
        "std": [s / (255 * p.scale) for s in p.std[order]],
        "channel_order": "BGR" if p.bgr else "RGB",
        "pixel_range": 255 * p.scale,  # the network's input for a white pixel, before mean/std
        "preset": p.name,
    }


def preprocess_from_timm(cfg: dict) -> Preprocess:
    """The inverse of ``preprocess_to_timm``."""
    if cfg.get("interpolation", INTERPOLATION) != INTERPOLATION:
        raise ValueError(f"interpolation {cfg['interpolation']!r} (only {INTERPOLATION})")
    _, crop, _ = cfg["input_size"]
    bgr = cfg.get("channel_order", "RGB") == "BGR"
    order = slice(None, None, -1) if bgr else slice(None)
    pixel_range = float(cfg.get("pixel_range", 1.0))
    return Preprocess(
        name=cfg.get("preset", "caffe" if bgr else "torchvision"),
        resize=round(crop / cfg["crop_pct"]),
        crop=int(crop),
        square_resize=cfg.get("crop_mode", "center") == "squash",
        bgr=bgr,
        scale=pixel_range / 255,
        mean=tuple(round(m * pixel_range, 9) for m in cfg["mean"][order]),
        std=tuple(round(s * pixel_range, 9) for s in cfg["std"][order]),
    )
