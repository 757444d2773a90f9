"""``squeezenet convert`` and ``squeezenet download``."""

from __future__ import annotations

import argparse
import urllib.request
from pathlib import Path

from ..data.datasets import squeezenet_home
from ..errors import SqueezeNetError
from ..inference.export import TARGETS, target
from ..io import atomic_output
from ..weights.detect import sha256_file
from ..weights.entries import ENTRIES, list_weights
from ..weights.formats import writable_suffixes, writer
from ..weights.load import save_model
from .common import add_weights_args, model_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "convert",
        help="any supported weights -> .safetensors (or .pth, .caffemodel, .npz)",
        description="Write weights in another format, only where the file keeps the "
        "predictions: a format without metadata is read back with its reader's assumptions "
        "(preset, conv10's padding, class names); an input normalisation that differs is "
        "folded into conv1 where that is exact, anything else is refused.",
    )
    p.add_argument("src", metavar="SRC")
    p.add_argument(
        "-o", "--output", required=True, metavar="OUT",
        help="output file; its suffix picks the format: .safetensors (keeps all metadata), "
        ".pth/.pt (torchvision preset), .caffemodel (Caffe preset), .npz (old Chainer net)",
    )  # fmt: skip
    add_weights_args(p, required=False)
    p.set_defaults(run=run_convert)
    p = subparsers.add_parser("download", help="fetch named weights into the cache, hash-checked")
    p.add_argument("name", choices=list_weights())
    p.set_defaults(run=run_download)


def run_convert(args: argparse.Namespace) -> None:
    _check_output(Path(args.output))  # before reading the source
    args.weights = args.src
    model = model_from_args(args)
    notes = save_model(model, args.output)
    info = model.weights_info
    print(
        f"{args.output}: {info.arch}, {info.num_classes} classes, from {info.file_format}"
        + "".join(f"; {note}" for note in notes)
    )


def _check_output(path: Path) -> None:
    """A deploy target's suffix points to ``export``; the weights formats decide the rest."""
    suffix = path.suffix.lower()
    if suffix and suffix not in writable_suffixes():
        for name in TARGETS:
            if suffix in target(name).SUFFIXES:
                raise SqueezeNetError(
                    f"{path}: {suffix} is a deploy format ({name}), not weights: 'squeezenet "
                    f"export' writes it; convert writes {', '.join(writable_suffixes())}"
                )
    writer(path)


def run_download(args: argparse.Namespace) -> None:
    entry = ENTRIES[args.name]
    home = squeezenet_home()
    home.mkdir(parents=True, exist_ok=True)
    files = {entry.filename: (entry.url, entry.sha256), **entry.companions}
    for name, (url, sha) in files.items():
        target = home / name
        if target.exists() and sha256_file(target).startswith(sha):
            print(f"{target}: already present")
            continue
        print(f"downloading {url}")
        try:
            with atomic_output(target) as tmp:
                urllib.request.urlretrieve(url, tmp)
                digest = sha256_file(tmp)
                if not digest.startswith(sha):
                    raise SqueezeNetError(f"{url}: SHA-256 {digest} does not match {sha}")
        except OSError as e:
            raise SqueezeNetError(f"{url}: download failed ({e})") from None
        print(f"{target}: ok")
