"""Named pretrained weights, described as data (like torchvision's Weights enums).

Each entry says where the file comes from (URL and SHA-256), how to read it, which
architecture it fills (with the keyword arguments that reproduce its original framework's
output), how images must be preprocessed, which labels its outputs carry, its license and its
reported accuracy. A file whose SHA-256 matches an entry is recognised whatever its path.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..data.transforms import Preprocess, get_preset
from ..errors import SqueezeNetError

_DC = "https://github.com/songhan/SqueezeNet-Deep-Compression/raw/5623e3cdbe1fcd83328c61ce2ee42c34ed319aa3"
_NCNN = "https://github.com/zchrissirhcz/squeezenet-ncnn-pnnx-opencv-cpp/raw/fc56736098dd40b834912d7409d4ab4931b30802"


@dataclass(frozen=True)
class WeightsEntry:
    name: str
    arch: str
    url: str
    sha256: str  # full digest, or the 8-digit prefix that torchvision puts in its file names
    file_format: str
    preprocess: str  # preset name in squeezenet.data.transforms.PRESETS
    labels: str  # "imagenet1k"
    license: str
    accuracy: dict[str, float]  # published top-1/top-5 on the full ImageNet-1k val set
    model_kwargs: dict = field(default_factory=dict)
    companions: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (url, sha256)
    notes: str = ""

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    def transforms(self) -> Preprocess:
        """The preprocessing these weights need (torchvision's ``Weights.transforms()``)."""
        return get_preset(self.preprocess)


ENTRIES: dict[str, WeightsEntry] = {
    e.name: e
    for e in [
        WeightsEntry(
            name="squeezenet1_0.deep_compression",
            arch="squeezenet1_0",
            url=f"{_DC}/compressed_SqueezeNet.net",
            sha256="e4ab6960ae8cd81505e1c2136921201507e930966c53deaf15862a395b3a3261",
            file_format="deep_compression",
            preprocess="caffe",
            labels="imagenet1k",
            license="BSD-2-Clause",
            accuracy={"top1": 57.5, "top5": 80.3},
            model_kwargs={"classifier_padding": 1},
            notes="Han et al. 2016: pruned + 8-bit weight sharing, 0.66 MB. Caffe origin: "
            "conv10 pad 1, BGR 0-255 mean-subtracted 227x227 input.",
        ),
        WeightsEntry(
            name="squeezenet1_1.ncnn",
            arch="squeezenet1_1",
            url=f"{_NCNN}/squeezenet_v1.1.ncnn.param",
            sha256="7dfb3045edf49f199ccc03dfc262956c6b9f38089b14d32a273aa8463c49c46b",
            file_format="ncnn",
            preprocess="torchvision",
            labels="imagenet1k",
            license="BSD-3-Clause",
            accuracy={"top1": 58.178, "top5": 80.624},
            companions={
                "squeezenet_v1.1.ncnn.bin": (
                    f"{_NCNN}/squeezenet_v1.1.ncnn.bin",
                    "3de9f2f9dbbbc4468fe452d9033300633b60748073a9509a7ea882caec57e544",
                )
            },
            notes="torchvision's squeezenet1_1 ImageNet weights exported to ncnn (fp16 weights).",
        ),
        WeightsEntry(
            name="squeezenet1_0.torchvision",
            arch="squeezenet1_0",
            url="https://download.pytorch.org/models/squeezenet1_0-b66bff10.pth",
            sha256="b66bff10",
            file_format="torchvision",
            preprocess="torchvision",
            labels="imagenet1k",
            license="BSD-3-Clause",
            accuracy={"top1": 58.092, "top5": 80.420},
        ),
        WeightsEntry(
            name="squeezenet1_1.torchvision",
            arch="squeezenet1_1",
            url="https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth",
            sha256="b8a52dc0",
            file_format="torchvision",
            preprocess="torchvision",
            labels="imagenet1k",
            license="BSD-3-Clause",
            accuracy={"top1": 58.178, "top5": 80.624},
        ),
    ]
}


def list_weights() -> list[str]:
    return sorted(ENTRIES)


def get_weights(name: str) -> WeightsEntry:
    """The registered entry ``name`` (see ``list_weights()``)."""
    if name not in ENTRIES:
        raise SqueezeNetError(f"unknown weights {name!r}; choose from {', '.join(ENTRIES)}")
    return ENTRIES[name]


def entry_for_sha256(digest: str) -> WeightsEntry | None:
    """The entry whose file (or companion file) has this SHA-256 (full or 8-digit prefix)."""
    for entry in ENTRIES.values():
        hashes = [entry.sha256] + [sha for _, sha in entry.companions.values()]
        if any(digest.startswith(h) for h in hashes):
            return entry
    return None
