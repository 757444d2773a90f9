"""The old Chainer repo's npz: the real file, a round trip, and damaged files."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from conftest import shared_path

from squeezenet.errors import FormatError
from squeezenet.weights.formats import chainer

REAL = "weights/chainer-seed-format/weights.npz"
RENAME = {"W": "weight", "b": "bias", "gamma": "weight", "beta": "bias"}
RENAME |= {"avg_mean": "running_mean", "avg_var": "running_var", "N": "num_batches_tracked"}


@pytest.fixture(scope="module")
def real() -> dict[str, np.ndarray]:
    with np.load(shared_path(REAL), allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}


def test_read_real_file(real):
    layers = chainer.read(shared_path(REAL))
    names = [name for name, _ in layers]
    assert len(layers) == 34
    assert names[:5] == ["conv1", "fire2/conv1", "fire2/conv2", "fire2/conv3", "fire2/bn4"]
    assert names[-2:] == ["fire9/bn4", "conv10"]
    params = dict(layers)
    assert params["conv1"]["weight"].shape == (96, 3, 7, 7)
    assert params["fire4/conv1"]["weight"].shape == (32, 128, 1, 1)
    assert params["fire9/conv3"]["weight"].shape == (256, 64, 3, 3)
    assert params["conv10"]["weight"].shape == (1000, 512, 1, 1)
    bn_keys = {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}
    assert params["fire5/bn4"].keys() == bn_keys
    # Every array comes back exactly as numpy's own loader gives it, under its PyTorch name.
    count = 0
    for name, p in layers:
        for short, torch_name in RENAME.items():
            key = f"{name}/{short}"
            if key in real:
                got = p[torch_name]
                assert got.dtype == real[key].dtype and got.shape == real[key].shape, key
                assert got.tobytes() == real[key].tobytes(), key
                assert got.flags.writeable
                count += 1
    assert count == len(real) == 92


def test_round_trip_matches_real_layout(tmp_path):
    layers = chainer.read(shared_path(REAL))
    path = tmp_path / "out.npz"
    chainer.write(path, layers)
    back = chainer.read(path)
    for (name, a), (name2, b) in zip(layers, back, strict=True):
        assert name == name2 and a.keys() == b.keys()
        for key in a:
            assert a[key].dtype == b[key].dtype and a[key].tobytes() == b[key].tobytes()

    def layout(p):
        with zipfile.ZipFile(p) as zf:
            infos = zf.infolist()
        with np.load(p) as npz:
            arrays = {k: (npz[k].dtype, npz[k].shape) for k in npz.files}
        return arrays, {i.compress_type for i in infos}

    assert layout(path) == layout(shared_path(REAL))
    assert layout(path)[1] == {zipfile.ZIP_DEFLATED}
    assert [p.name for p in tmp_path.iterdir()] == ["out.npz"]


def test_write_casts_and_fills_n(tmp_path):
    layers = [
        (n, {k: v.astype(np.float64) for k, v in p.items() if k != "num_batches_tracked"})
        for n, p in chainer.read(shared_path(REAL))
    ]
    chainer.write(tmp_path / "x.npz", layers)
    with np.load(tmp_path / "x.npz") as npz:
        assert npz["conv1/W"].dtype == np.float32 and npz["fire2/bn4/N"].dtype == np.int64
        assert npz["fire2/bn4/N"].shape == ()


def test_prefixed_keys(real, tmp_path):
    path = tmp_path / "prefixed.npz"
    np.savez(path, **{f"predictor/{k}": v for k, v in real.items()})
    assert [n for n, _ in chainer.read(path)] == chainer.LAYER_NAMES
    np.savez(path, **{f"predictor/{k}": v for k, v in real.items()}, stray=np.zeros(1))
    with pytest.raises(FormatError, match="outside the prefix"):
        chainer.read(path)


def saved(tmp_path, arrays: dict):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return path


def test_missing_extra_and_misshapen(real, tmp_path):
    cases = {
        "missing array 'fire3/conv2/b'": {k: v for k, v in real.items() if k != "fire3/conv2/b"},
        r"unexpected arrays \['fire3/extra'\]": real | {"fire3/extra": np.zeros(1, np.float32)},
        "fire3/conv2: weight": real | {"fire3/conv2/W": np.zeros((64, 17, 1, 1), np.float32)},
        "fire3/conv3: weight": real | {"fire3/conv3/b": np.zeros(63, np.float32)},
        "fire3/bn4: statistics": real | {"fire3/bn4/avg_var": np.zeros(127, np.float32)},
        "fire4/conv1: weight": real | {"fire4/conv1/W": np.zeros((32, 127, 1, 1), np.float32)},
        "conv10: weight": real | {"conv10/W": np.zeros((1000, 512, 1), np.float32)},
        "conv10: arrays are not floating point": real | {"conv10/b": np.zeros(1000, np.int32)},
        "fire2/bn4/N is not an integer scalar": real | {"fire2/bn4/N": np.zeros(2, np.int64)},
        "no single conv10/W": {k: v for k, v in real.items() if not k.startswith("conv10")},
    }
    for message, arrays in cases.items():
        path = saved(tmp_path, arrays)
        with pytest.raises(FormatError, match=f"^{path}: {message}"):
            chainer.read(path)
    without_n = {k: v for k, v in real.items() if not k.endswith("/N")}
    assert "num_batches_tracked" not in chainer.read(saved(tmp_path, without_n))[4][1]


def test_not_npz(real, tmp_path):
    path = tmp_path / "bad.npz"
    good = tmp_path / "good.npz"
    np.savez_compressed(good, **real)
    data = good.read_bytes()
    damaged = bytearray(data)
    damaged[len(data) // 3 : len(data) // 3 + 64] = bytes(64)
    for content in [
        b"",
        b"not a zip file\n",
        np.random.default_rng(0).bytes(5000),
        data[: len(data) // 2],
        data[:-30],
        bytes(damaged),
    ]:
        path.write_bytes(content)
        with pytest.raises(FormatError, match=f"^{path}: "):
            chainer.read(path)
    np.save(path, np.zeros(3))  # a plain .npy
    with pytest.raises(FormatError):
        chainer.read(path)
    with pytest.raises(FormatError, match="not a readable npz"):
        chainer.read(tmp_path / "missing.npz")


def test_pickle_and_lying_header_rejected(real, tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, **real | {"conv10/b": np.array([object()] * 1000, dtype=object)})
    with pytest.raises(FormatError, match="pickled"):
        chainer.read(path)
    # Headers that claim more data than the member holds: refused before allocating.
    for shape, message in [((10**12,), "too large"), ((1000, 512), "does not match")]:
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            header, {"descr": "<f4", "fortran_order": False, "shape": shape}
        )
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("conv10/W.npy", header.getvalue() + b"\0" * 4)
        with pytest.raises(FormatError, match=f"conv10/W.*{message}"):
            chainer.read(path)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("conv10/W.txt", b"hello")
    with pytest.raises(FormatError, match="unexpected or repeated member"):
        chainer.read(path)


def test_write_rejects_other_networks(tmp_path):
    layers = chainer.read(shared_path(REAL))
    path = tmp_path / "x.npz"
    with pytest.raises(FormatError, match="expected 34 layers"):
        chainer.write(path, layers[:-1])
    broken = [*layers[:4], ("fire2/bn4", {"weight": np.ones(128, np.float32)}), *layers[5:]]
    with pytest.raises(FormatError, match="fire2/bn4 needs"):
        chainer.write(path, broken)
    misshapen = [
        *layers[:-1],
        (
            "conv10",
            {"weight": np.ones((10, 511, 1, 1), np.float32), "bias": np.ones(10, np.float32)},
        ),
    ]
    with pytest.raises(FormatError, match="conv10: weight"):
        chainer.write(path, misshapen)
    assert not list(tmp_path.iterdir())
