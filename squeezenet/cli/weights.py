"""``squeezenet convert`` and ``squeezenet download``."""

from __future__ import annotations

import argparse

from ..errors import SqueezeNetError
from .common import FORMAT_CHOICES, LazyChoices, existing_file, model_from_args, output_file


def _names() -> list[str]:
    from ..weights.entries import list_weights

    return list_weights()


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "convert", help="any supported weights -> .safetensors (or .pth, .caffemodel, .npz)"
    )
    p.add_argument("src", metavar="SRC", help="weights file or registered name")
    p.add_argument(
        "-o", "--output", required=True, metavar="OUT", type=output_file,
        help="output file; its suffix picks the format: .safetensors (default, keeps metadata), "
        ".pth (torchvision), .caffemodel (Caffe), .npz (old Chainer layout)",
    )  # fmt: skip
    p.add_argument("--format", choices=FORMAT_CHOICES, help="SRC's format, if not detected")
    p.add_argument(
        "--prototxt", type=existing_file, metavar="FILE",
        help="Caffe prototxt giving layer shapes and padding",
    )  # fmt: skip
    p.add_argument("--preprocess", choices=["caffe", "torchvision"], help="override preset")
    p.set_defaults(run=run_convert)
    p = subparsers.add_parser("download", help="fetch named weights into the cache, hash-checked")
    p.add_argument("name", choices=LazyChoices(_names))
    p.set_defaults(run=run_download)


def run_convert(args: argparse.Namespace) -> None:
    from ..weights.load import save_model

    args.weights = args.src
    model = model_from_args(args)
    save_model(model, args.output)
    info = model.weights_info
    print(f"{args.output}: {info.arch}, {info.num_classes} classes, from {info.file_format}")


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
