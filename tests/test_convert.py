"""Every conversion keeps its predictions or refuses in one line.

The matrix: every readable source (the shared Deep Compression, ncnn and Chainer files, a
.sqz and an exported .onnx of them, a fine-tuned 10-class model with class names, every
registered architecture with random weights, and two models whose preprocessing differs from
a preset in its normalisation alone) converted by ``squeezenet convert`` to every writable
suffix, then loaded back with ``load_model``. The written file's own ``weights_info``
preprocessing must give, on real photos, the logits the source gives with its own (within 1e-5
of the largest), or the conversion is refused in the one
line that the table below names.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import pytest
import torch

import squeezenet
from squeezenet.cli import main
from squeezenet.data.transforms import Preprocess, get_preset, load_image
from squeezenet.errors import FormatError
from squeezenet.inference.export import export
from squeezenet.models import list_models
from squeezenet.weights.formats import sqz
from tests.conftest import shared_path

DC = "weights/deep-compression/compressed_SqueezeNet.net"
PROTOTXT = "weights/deep-compression/SqueezeNet_deploy.prototxt"
NCNN = "weights/ncnn/squeezenet_v1.1.ncnn.param"
CHAINER = "weights/chainer-seed-format/weights.npz"
PHOTOS = ("chelsea.png", "coffee.png")
TARGETS = (".safetensors", ".pth", ".caffemodel", ".npz")
TOLERANCE = 1e-5  # of the largest logit

# Caffe's colours at torchvision's geometry, and the reverse: only the normalisation differs
# from the preset a reader assumes, so it folds into conv1.
CAFFE_COLOUR = dataclasses.replace(
    get_preset("caffe"), name="caffe-colour", resize=256, crop=224, square_resize=False
)
TV_COLOUR = dataclasses.replace(
    get_preset("torchvision"), name="tv-colour", resize=256, crop=227, square_resize=True
)

SOURCES = ["dc", "ncnn", "chainer", "sqz", "onnx", "tuned10", "fold-tv", "fold-caffe"] + [
    f"random-{arch}" for arch in list_models()
]

TV = "torchvision preprocessing"
CAFFE = "Caffe preprocessing"
PTH = (".pth", ".pt")


def _npz(arch: str) -> str:
    return f"{arch} does not fit the old Chainer layout of a .npz, only squeezenet1_0_chainer does"


def _expected() -> dict[tuple[str, str], str]:
    """(source, suffix) -> the refusal after '{out}: '; cells not listed keep the logits."""
    refused: dict[tuple[str, str], str] = {}
    dc_pth = f"conv10's padding of 1 and {CAFFE} (read back: conv10's padding of 0, {TV})"
    pth = {  # what a .pth cannot say: its reader assumes torchvision's preset and plain layout
        "dc": dc_pth,
        "onnx": dc_pth,
        "chainer": f"squeezenet1_0_chainer and {CAFFE} (read back: squeezenet1_0_bn, {TV})",
        "tuned10": "the 10 class names (read back: no names)",
        "fold-caffe": "conv10's padding of 1 and preprocessing 'tv-colour' (RGB, crop 227) "
        f"(read back: conv10's padding of 0, {TV})",
        "random-squeezenet1_0_bypass": "squeezenet1_0_bypass (read back: squeezenet1_0)",
        "random-squeezenet1_0_chainer": "squeezenet1_0_chainer (read back: squeezenet1_0_bn)",
    }
    caffemodel = {  # Caffe's preset, conv10 padded by 1 for a 7x7 conv1, a plain SqueezeNet
        "ncnn": f"{TV} (read back: {CAFFE})",
        "sqz": f"{TV} (read back: {CAFFE})",
        "chainer": "squeezenet1_0_chainer (read back: squeezenet1_0)",
        "tuned10": f"{TV} and the 10 class names (read back: {CAFFE}, no names)",
        "fold-tv": f"preprocessing 'caffe-colour' (BGR, crop 224) (read back: {CAFFE})",
        "random-squeezenet1_0": f"conv10's padding of 0 and {TV} "
        f"(read back: conv10's padding of 1, {CAFFE})",
        "random-squeezenet1_1": f"{TV} (read back: {CAFFE})",
        "random-alexnet": "alexnet (read back: first layer of shape (64, 3, 11, 11) matches no "
        "SqueezeNet version)",
    }
    for arch in ("squeezenet1_0_bypass", "squeezenet1_0_complex_bypass", "squeezenet1_0_bn",
                 "squeezenet1_0_chainer", "zfnet"):  # fmt: skip
        caffemodel[f"random-{arch}"] = f"{arch} and {TV} (read back: squeezenet1_0, {CAFFE})"
    caffemodel["random-squeezenet1_1_bn"] = (
        f"squeezenet1_1_bn and {TV} (read back: squeezenet1_1, {CAFFE})"
    )
    for source, what in pth.items():
        for suffix in PTH:
            refused[source, suffix] = f"a {suffix} cannot hold {what}; write .safetensors"
    for source, what in caffemodel.items():
        refused[source, ".caffemodel"] = f"a .caffemodel cannot hold {what}; write .safetensors"
    arch_of = {"dc": "squeezenet1_0", "ncnn": "squeezenet1_1", "tuned10": "squeezenet1_1",
               "sqz": "squeezenet1_1", "onnx": "squeezenet1_0",
               "fold-tv": "squeezenet1_1", "fold-caffe": "squeezenet1_0"}  # fmt: skip
    arch_of.update({f"random-{a}": a for a in list_models() if a != "squeezenet1_0_chainer"})
    for source, arch in arch_of.items():
        refused[source, ".npz"] = f"{_npz(arch)}; write .safetensors"
    refused["random-squeezenet1_0_chainer", ".npz"] = (
        f"a .npz cannot hold {TV} (read back: {CAFFE}); write .safetensors"
    )
    return refused


EXPECTED = _expected()
# .pt is .pth's writer under another name: two sources suffice for it
CELLS = [(s, t) for s in SOURCES for t in TARGETS] + [("dc", ".pt"), ("ncnn", ".pt")]
FOLDED = {("fold-tv", ".pth"), ("fold-caffe", ".caffemodel")}


def _random(arch: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = squeezenet.create_model(arch, **kwargs)
    with torch.no_grad():
        for name, buffer in model.named_buffers():  # BatchNorm statistics that matter
            if "running_mean" in name:
                buffer.uniform_(-0.5, 0.5)
            elif "running_var" in name:
                buffer.uniform_(0.5, 1.5)
    return model


def _tuned10(folder: Path) -> Path:
    """The ncnn v1.1 weights with a new, perturbed 10-class head and its class names."""
    torch.manual_seed(1)
    model = squeezenet.create_model("squeezenet1_1", weights=shared_path(NCNN), num_classes=10)
    with torch.no_grad():
        head = model.get_classifier()
        head.weight.normal_(0, 0.05)
        head.bias.uniform_(0, 1)
    info = model.weights_info
    info.classes = [f"class name {i}" for i in range(10)]
    info.class_ids = [f"n{i:08d}" for i in range(10)]
    path = folder / "tuned10.safetensors"
    squeezenet.save_model(model, path)
    return path


def _source_file(name: str, folder: Path) -> tuple[Path, list[str]]:
    """The source file of ``name`` and the extra arguments ``convert`` takes to read it."""
    if name == "dc":
        return shared_path(DC), ["--prototxt", str(shared_path(PROTOTXT))]
    if name in ("ncnn", "chainer"):
        return shared_path(NCNN if name == "ncnn" else CHAINER), []
    if name == "tuned10":
        return _tuned10(folder), []
    if name == "sqz":  # the ncnn weights in the compressed container, stored as float16
        model = squeezenet.load_model(shared_path(NCNN))
        state = {k: v.numpy() for k, v in model.state_dict().items()}
        sqz.write(folder / "v11.sqz", state, model.weights_info.to_meta())
        return folder / "v11.sqz", []
    if name == "onnx":  # the Deep Compression weights exported, with their metadata
        model = squeezenet.load_model(shared_path(DC))
        export(model, folder / "v10.onnx", "onnx")
        return folder / "v10.onnx", []
    if name == "fold-tv":
        model, preprocess = _random("squeezenet1_1", seed=2), CAFFE_COLOUR
    elif name == "fold-caffe":
        model, preprocess = _random("squeezenet1_0", seed=3, classifier_padding=1), TV_COLOUR
    else:
        model, preprocess = _random(name.removeprefix("random-")), get_preset("torchvision")
    model.weights_info.preprocess = preprocess
    path = folder / f"{name}.safetensors"
    squeezenet.save_model(model, path)
    return path, []


@functools.cache
def _photos(preprocess: Preprocess) -> torch.Tensor:
    return torch.stack([preprocess(load_image(shared_path(f"data/photos/{p}"))) for p in PHOTOS])


def _logits(model: torch.nn.Module, preprocess: Preprocess) -> torch.Tensor:
    with torch.no_grad():
        return model(_photos(preprocess))


@dataclasses.dataclass
class Source:
    path: Path
    args: list[str]
    logits: torch.Tensor
    classes: list[str] | None


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Each source built and its logits computed once, when a test first asks for it."""
    folder = tmp_path_factory.mktemp("sources")
    cache: dict[str, Source] = {}

    def get(name: str) -> Source:
        if name not in cache:
            path, args = _source_file(name, folder)
            prototxt = args[1] if args else None
            model = squeezenet.load_model(path, prototxt=prototxt)
            info = model.weights_info
            cache[name] = Source(path, args, _logits(model, info.preprocess), info.classes)
        return cache[name]

    return get


def _convert(capsys, source: Source, out: Path) -> tuple[int, str, str]:
    code = main(["convert", str(source.path), "-o", str(out), *source.args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(("name", "suffix"), CELLS)
def test_convert_keeps_the_logits_or_refuses(shared, sources, tmp_path, capsys, name, suffix):
    source = sources(name)
    out = tmp_path / f"converted{suffix}"
    code, stdout, stderr = _convert(capsys, source, out)
    refusal = EXPECTED.get((name, suffix))
    if refusal is not None:
        assert (code, stdout, stderr) == (2, "", f"squeezenet convert: error: {out}: {refusal}\n")
        assert list(tmp_path.iterdir()) == []  # nothing written, no temporary left
        return
    assert code == 0 and stderr == "" and stdout.count("\n") == 1, stderr
    folded = "; input normalisation folded into conv1 for "
    assert (folded in stdout) == ((name, suffix) in FOLDED), stdout
    back = squeezenet.load_model(out)
    info = back.weights_info
    logits = _logits(back, info.preprocess)  # the written file's own preprocessing
    error = (logits - source.logits).abs().max() / source.logits.abs().max()
    assert error <= TOLERANCE, f"{error:.2e}"
    if source.classes is not None:
        assert info.classes == source.classes


def test_predict_after_convert_to_pth_or_caffemodel(shared, tmp_path, capsys):
    """The Deep Compression file's prediction survives a .caffemodel; a .pth is refused."""
    v10 = tmp_path / "v10.pth"
    assert main(["convert", str(shared(DC)), "-o", str(v10)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a .pth cannot hold conv10's padding of 1 and Caffe" in err
    assert not v10.exists()
    caffemodel = tmp_path / "v10.caffemodel"
    assert main(["convert", str(shared(DC)), "-o", str(caffemodel)]) == 0
    capsys.readouterr()
    chelsea = str(shared("data/photos/chelsea.png"))
    for weights in (shared(DC), caffemodel):
        argv = ["predict", chelsea, "--weights", str(weights), "--topk", "1", "--workers", "0"]
        assert main([*argv, "--no-progress"]) == 0
        assert capsys.readouterr().out.splitlines()[1].split() == [
            "70.05%",
            "Egyptian",
            "cat",
            "(285)",
        ]


WRITABLE = ".safetensors, .caffemodel, .pth, .pt, .npz"


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ("c3.onnx", "c3.onnx: .onnx is a deploy format (onnx), not weights: 'squeezenet export' "
         f"writes it; convert writes {WRITABLE}"),
        ("c4.net", "c4.net: a .net (deep_compression) is read, not written, as weights: nothing "
         f"here writes it; write {WRITABLE}"),
        ("c5.sqz", "c5.sqz: a .sqz (sqz) is read, not written, as weights: 'squeezenet compress' "
         f"writes it; write {WRITABLE}"),
        ("c6.param", "c6.param: .param is a deploy format (ncnn), not weights: 'squeezenet "
         f"export' writes it; convert writes {WRITABLE}"),
        ("c7.pte", "c7.pte: .pte is a deploy format (executorch), not weights: 'squeezenet "
         f"export' writes it; convert writes {WRITABLE}"),
        ("c9.xyz", f"c9.xyz: unknown suffix '.xyz'; weights are written as {WRITABLE}"),
        ("c8", f"c8: no suffix; weights are written as {WRITABLE}"),
    ],
)  # fmt: skip
def test_convert_refuses_suffixes_it_does_not_write(shared, tmp_path, capsys, output, message):
    out = tmp_path / output
    assert main(["convert", str(shared(NCNN)), "-o", str(out)]) == 2
    assert capsys.readouterr().err == f"squeezenet convert: error: {tmp_path}/{message}\n"
    assert list(tmp_path.iterdir()) == []


def test_save_model_decides_as_convert_does(sources, tmp_path):
    """The Python API refuses what convert refuses, with the same line."""
    model = squeezenet.load_model(sources("dc").path)
    with pytest.raises(FormatError) as e:
        squeezenet.save_model(model, tmp_path / "v10.pth")
    assert str(e.value) == f"{tmp_path / 'v10.pth'}: {EXPECTED['dc', '.pth']}"
    with pytest.raises(FormatError, match="unknown suffix '.weights'"):
        squeezenet.save_model(model, tmp_path / "v10.weights")
    assert list(tmp_path.iterdir()) == []


def test_normalisation_is_not_folded_through_padding(sources, tmp_path):
    """AlexNet's conv1 pads its input: a normalisation change cannot be folded into it."""
    model = squeezenet.load_model(sources("random-zfnet").path)
    model.weights_info.preprocess = CAFFE_COLOUR
    with pytest.raises(FormatError) as e:
        squeezenet.save_model(model, tmp_path / "z.pth")
    assert str(e.value).endswith(
        "z.pth: a .pth cannot hold preprocessing 'caffe-colour' (BGR, crop 224) (not foldable: "
        f"its first convolution pads its input or has no bias) (read back: {TV}); "
        "write .safetensors"
    )


def test_compress_writes_only_sqz(shared, tmp_path, capsys):
    out = tmp_path / "x.safetensors"
    assert main(["compress", "--weights", str(shared(NCNN)), "-o", str(out)]) == 2
    assert capsys.readouterr().err == (
        f"squeezenet compress: error: {out}: compress writes .sqz files; name the output OUT.sqz "
        "('squeezenet convert' writes the other weights formats)\n"
    )
    assert list(tmp_path.iterdir()) == []


def test_fold_is_exact_on_the_photos(sources):
    """The folded conv1 gives the unfolded network's logits (float64 would agree to 1e-12)."""
    from squeezenet.weights.fold import fold_input

    model = squeezenet.load_model(sources("ncnn").path)
    folded = fold_input(model, get_preset("torchvision"), CAFFE_COLOUR)
    expected = sources("ncnn").logits
    error = (_logits(folded, CAFFE_COLOUR) - expected).abs().max() / expected.abs().max()
    assert error <= TOLERANCE
    assert folded.weights_info.preprocess == CAFFE_COLOUR


def test_a_writer_that_changes_a_weight_is_caught(tmp_path, monkeypatch):
    """The read-back check compares every array: a writer that alters one writes nothing."""
    from squeezenet.weights.formats import torchvision

    write = torchvision.write

    def altering(path, state):
        write(path, {**state, "features.0.bias": state["features.0.bias"] + 1e-3})

    monkeypatch.setattr(torchvision, "write", altering)
    with pytest.raises(FormatError) as e:
        squeezenet.save_model(_random("squeezenet1_1"), tmp_path / "m.pth")
    assert str(e.value) == (
        f"{tmp_path / 'm.pth'}: features.0.bias does not read back unchanged from a .pth; "
        "write .safetensors"
    )
    assert list(tmp_path.iterdir()) == []
