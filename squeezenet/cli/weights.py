"""``squeezenet convert`` and ``squeezenet download``."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import SqueezeNetError
from .common import LazyChoices, add_reading_args, model_from_args, output_file


def _names() -> list[str]:
    from ..weights.entries import list_weights

    return list_weights()


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "convert",
        help="any supported weights -> .safetensors (or .pth, .caffemodel, .npz)",
        description="Write weights in another format, only where the file keeps the "
        "predictions: a format without metadata is read back with its reader's assumptions "
        "(preset, conv10's padding, class names); an input normalisation that differs is "
        "folded into conv1 where that is exact, anything else is refused.",
    )
    p.add_argument("src", metavar="SRC", help="weights file or registered name")
    p.add_argument(
        "-o", "--output", required=True, metavar="OUT", type=output_file,
        help="output file; its suffix picks the format: .safetensors (keeps all metadata), "
        ".pth/.pt (torchvision preset), .caffemodel (Caffe preset), .npz (old Chainer net)",
    )  # fmt: skip
    add_reading_args(p, "SRC's")
    p.set_defaults(run=run_convert)
    p = subparsers.add_parser("download", help="fetch named weights into the cache, hash-checked")
    p.add_argument("name", choices=LazyChoices(_names))
    p.set_defaults(run=run_download)


def run_convert(args: argparse.Namespace) -> None:
    from ..weights.load import save_model

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
    from ..inference.export import TARGETS, target
    from ..weights.formats import writable_suffixes, writer

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
    import urllib.request

    from ..data.datasets import squeezenet_home
    from ..io import atomic_output
    from ..weights.detect import sha256_file
    from ..weights.entries import ENTRIES

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
