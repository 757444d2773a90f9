"""``WeightsInfo``: what a loaded model needs to classify correctly, and its metadata form.

``WeightsInfo.from_meta`` builds it from metadata (a file's, or what a reader found) and
``to_meta`` writes it back; files in the project's formats store exactly that dict.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..data.datasets import imagenet_classes
from ..data.transforms import Preprocess, get_preset


@dataclass
class WeightsInfo:
    """What a loaded model needs to classify correctly: arch, preprocessing, labels, origin."""

    arch: str
    model_kwargs: dict
    num_classes: int
    preprocess: Preprocess
    classes: list[str] | None = None  # human-readable names, one per output
    class_ids: list[str] | None = None  # wnids or folder names, for ImageFolder mapping
    source: str = ""
    sha256: str = ""
    file_format: str = ""
    entry: str | None = None
    extra: dict = field(default_factory=dict)

    def label(self, index: int) -> str:
        return self.classes[index] if self.classes else f"class {index}"

    @classmethod
    def from_meta(cls, meta: dict, **fields) -> WeightsInfo:
        """Build from metadata (``to_meta``'s keys), ``fields`` taking precedence.

        ``preprocess`` may be a ``Preprocess``, its dict or a preset name (default:
        torchvision's). A 1000-class model without class names gets ImageNet's, when the
        class list is available.
        """
        meta = {**meta, **fields}
        preprocess = meta.get("preprocess") or "torchvision"
        if isinstance(preprocess, str):
            preprocess = get_preset(preprocess)
        elif isinstance(preprocess, dict):
            preprocess = Preprocess.from_dict(preprocess)
        num_classes = int(meta["num_classes"])
        classes, class_ids = meta.get("classes"), meta.get("class_ids")
        if classes is None and num_classes == 1000:
            class_ids, classes = imagenet_classes() or (class_ids, None)
        return cls(
            arch=meta["arch"],
            model_kwargs=dict(meta.get("model_kwargs") or {}),
            num_classes=num_classes,
            preprocess=preprocess,
            classes=classes,
            class_ids=class_ids,
            source=meta.get("source", ""),
            sha256=meta.get("sha256", ""),
            file_format=meta.get("file_format", ""),
            entry=meta.get("entry"),
            extra=dict(meta.get("extra") or {}),
        )

    def to_meta(self) -> dict:
        """The metadata form (JSON-ready) that ``from_meta`` reads back."""
        return {
            "arch": self.arch,
            "model_kwargs": self.model_kwargs,
            "num_classes": self.num_classes,
            "preprocess": self.preprocess.to_dict(),
            "classes": self.classes,
            "class_ids": self.class_ids,
            "source": self.source,
            "sha256": self.sha256,
            "file_format": self.file_format,
            "entry": self.entry,
        }
