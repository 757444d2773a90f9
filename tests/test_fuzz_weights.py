"""Fuzzing every weights reader, and ``load_model`` as a whole, with damaged real files.

Seeds are the real files from ../shared (Deep Compression, ncnn, Chainer, the Caffe prototxt)
and files written from the real v1.0/v1.1 weights by this package's writers (Caffe, torchvision,
safetensors, .sqz), by ``torch.onnx.export``, by the .pt2 target (``torch.export.save``), by
the ExecuTorch target (a .pte, read by ExecuTorch's runtime where it is installed), and the ncnn
export of the Chainer file (fp16 .bin, BatchNorms folded, a .param.json sidecar). Each input
must load or end in a FormatError (a SqueezeNetError) naming the file, in bounded time and
memory; truncations must fail.
"""

from __future__ import annotations

import functools
import importlib.util
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import shared_path
from fuzz import FUZZ, Damage, check, damages, member_damages, report, sweep
from hypothesis import given
from hypothesis import strategies as st

import squeezenet
from squeezenet.inference.export import export
from squeezenet.weights.formats import (
    Hints,
    caffe,
    chainer,
    deep_compression,
    ncnn,
    pt2,
    safetensors,
    sqz,
    torchvision,
)
from squeezenet.weights.formats import onnx as onnx_format

EXECUTORCH = importlib.util.find_spec("executorch") is not None
NO_EXECUTORCH = "ExecuTorch is not installed (pip install 'squeezenet[executorch]')"
if EXECUTORCH:
    from squeezenet.inference.executorch_runtime import ExecuTorchModel


@dataclass
class Target:
    files: dict[str, bytes]  # the file a reader is given first, then the files beside it
    read: Callable[[Path], object]
    loadable: bool = True  # whether load_model takes the first file
    truncation_fails: bool = True  # False for text that may end at any line

    @property
    def main(self) -> str:
        return next(iter(self.files))


def real(relative: str) -> bytes:
    return shared_path(relative).read_bytes()


def written(model: torch.nn.Module, tmp: Path, name: str) -> bytes:
    squeezenet.save_model(model, tmp / name)
    return (tmp / name).read_bytes()


def exported_onnx(model: torch.nn.Module, path: Path) -> bytes:
    x = (torch.zeros(1, 3, 224, 224),)
    torch.onnx.export(model, x, path, dynamo=True, external_data=False, verbose=False)
    return path.read_bytes()


def exported_pt2(model: torch.nn.Module, path: Path) -> bytes:
    export(model, path, "pt2")
    return path.read_bytes()


def exported_pte(model: torch.nn.Module, path: Path) -> bytes:
    export(model, path, "executorch")
    return path.read_bytes()


def build_targets(tmp: Path) -> dict[str, Target]:
    dc = "weights/deep-compression/"
    v10 = squeezenet.load_model(shared_path(dc + "compressed_SqueezeNet.net"))
    v11 = squeezenet.load_model(shared_path("weights/ncnn/squeezenet_v1.1.ncnn.param"))
    shapes = caffe.conv_shapes(caffe.read_prototxt(shared_path(dc + "SqueezeNet_deploy.prototxt")))
    targets = {
        "deep_compression": Target(
            {"compressed_SqueezeNet.net": real(dc + "compressed_SqueezeNet.net")},
            lambda p: deep_compression.read(p, shapes),
        ),
        "ncnn": Target(
            {
                "squeezenet_v1.1.ncnn.param": real("weights/ncnn/squeezenet_v1.1.ncnn.param"),
                "squeezenet_v1.1.ncnn.bin": real("weights/ncnn/squeezenet_v1.1.ncnn.bin"),
            },
            ncnn.read,
        ),
        "caffe": Target(
            {"v10.caffemodel": written(v10, tmp, "v10.caffemodel")}, caffe.read_caffemodel
        ),
        "caffe_prototxt": Target(
            {"deploy.prototxt": real(dc + "SqueezeNet_deploy.prototxt")},
            lambda p: caffe.conv_shapes(caffe.read_prototxt(p), source=str(p)),
            loadable=False,
            truncation_fails=False,
        ),
        "chainer": Target(
            {"weights.npz": real("weights/chainer-seed-format/weights.npz")}, chainer.read
        ),
        "torchvision": Target({"v11.pth": written(v11, tmp, "v11.pth")}, torchvision.read),
        "onnx": Target({"v11.onnx": exported_onnx(v11, tmp / "v11.onnx")}, onnx_format.read),
        "pt2": Target({"v11.pt2": exported_pt2(v11, tmp / "v11.pt2")}, pt2.read),
        "safetensors": Target(
            {"v11.safetensors": written(v11, tmp, "v11.safetensors")}, safetensors.read
        ),
    }
    state = {k: v.numpy() for k, v in v11.state_dict().items()}
    sqz.write(tmp / "v11.sqz", state, v11.weights_info.to_meta())
    targets["sqz"] = Target({"v11.sqz": (tmp / "v11.sqz").read_bytes()}, sqz.read)
    chainer_model = squeezenet.load_model(shared_path("weights/chainer-seed-format/weights.npz"))
    export(chainer_model, tmp / "chainer.param", "ncnn", fp16=True)
    targets["ncnn_export"] = Target(
        {f: (tmp / f).read_bytes() for f in ("chainer.param", "chainer.bin", "chainer.param.json")},
        lambda p: ncnn.load(p, Hints()),
    )
    if EXECUTORCH:  # a .pte is run as it is (never rebuilt by load_model): the runtime reads it
        pte = {"v11.pte": exported_pte(v11, tmp / "v11.pte")}
        targets["executorch"] = Target(pte, ExecuTorchModel, loadable=False)
    return targets


@functools.cache
def targets() -> dict[str, Target]:
    """The seeds, built once (a cache rather than a fixture keeps hypothesis' reports short)."""
    folder = Path(tempfile.mkdtemp(prefix="fuzz-seeds-"))
    try:
        return build_targets(folder)
    finally:
        shutil.rmtree(folder)


@pytest.fixture(scope="module", autouse=True)
def outcome_report():
    yield
    report()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzzed")


TARGET_NAMES = [
    "deep_compression", "ncnn", "caffe", "caffe_prototxt", "chainer", "torchvision", "onnx",
    "pt2", "safetensors", "sqz", "ncnn_export",
    pytest.param("executorch", marks=pytest.mark.skipif(not EXECUTORCH, reason=NO_EXECUTORCH)),
]  # fmt: skip


def try_input(name: str, folder: Path, which: str, damage: Damage, label: str) -> None:
    """Write the damaged file beside intact companions; read it, then load_model it."""
    target = targets()[name]
    for file, content in target.files.items():
        (folder / file).write_bytes(damage.apply(content) if file == which else content)
    path, names = folder / target.main, list(target.files)
    must_fail = damage.kind == "truncate" and target.truncation_fails
    check(name, label, lambda: target.read(path), names, must_fail)
    if target.loadable:
        check(f"load_model({name})", label, lambda: squeezenet.load_model(path), names, must_fail)


# Inputs this fuzzing found that once escaped as foreign exceptions or unnamed errors; kept as
# regression cases (each must now end in a FormatError naming the file).
FOUND = {
    "torchvision": ("v11.pth", Damage("random", (b"q",))),  # IndexError / struct.error
    "chainer": ("weights.npz", Damage("bitflip", ((213, 0),))),  # SyntaxError in .npy header
    "caffe": ("v10.caffemodel", Damage("bitflip", ((1, 0),))),  # first layer lost, no path
    "caffe_prototxt": ("deploy.prototxt", Damage("bitflip", ((190, 0),))),  # no path
    "safetensors": ("v11.safetensors", Damage("bitflip", ((52, 0),))),  # bad 'arch', no path
}
if EXECUTORCH:  # a non-UTF-8 program identifier: the runtime's logging aborted the process
    FOUND["executorch"] = ("v11.pte", Damage("bitflip", ((7, 7), (7, 1))))


@pytest.mark.parametrize("name", TARGET_NAMES)
@FUZZ
@given(data=st.data())
def test_readers_survive_random_damage(workdir, name, data):
    files = targets()[name].files
    which = data.draw(st.sampled_from(list(files)), label="file")
    damage = data.draw(damages(len(files[which])), label="damage")
    try_input(name, workdir, which, damage, damage.kind)


PT2_MEMBERS = (
    "models/model.json", "data/weights/model_weights_config.json",
    "data/constants/model_constants_config.json", "extra/squeezenet.json",
)  # fmt: skip
"""The .pt2 members torch.export.load parses; damage elsewhere in the zip fails its CRCs."""


@FUZZ
@given(data=st.data())
def test_pt2_survives_damage_inside_its_zip(workdir, data):
    seed = targets()["pt2"].files["v11.pt2"]
    damage = data.draw(member_damages(seed, PT2_MEMBERS), label="damage")
    try_input("pt2", workdir, "v11.pt2", damage, f"member-{damage.edits[1].kind}")


@pytest.mark.parametrize("name", TARGET_NAMES)
def test_readers_survive_truncation_and_bitflip_sweeps(workdir, name):
    for which, seed in targets()[name].files.items():
        for damage in sweep(len(seed)):
            try_input(name, workdir, which, damage, f"{damage.kind}-sweep")


@pytest.mark.parametrize("name", list(FOUND))
def test_inputs_found_by_fuzzing(workdir, name):
    which, damage = FOUND[name]
    try_input(name, workdir, which, damage, "found")


@pytest.mark.parametrize("name", TARGET_NAMES)
def test_seeds_load(workdir, name):
    """The undamaged seeds load, so the fuzzing starts from valid files."""
    target = targets()[name]
    for file, content in target.files.items():
        (workdir / file).write_bytes(content)
    assert target.read(workdir / target.main) is not None
    if target.loadable:
        squeezenet.load_model(workdir / target.main)
