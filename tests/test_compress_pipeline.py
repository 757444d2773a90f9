"""``squeezenet compress`` end to end on the real weights and images (small budgets)."""

import json

import numpy as np
import pytest
import torch
from conftest import shared_path

import squeezenet
from squeezenet.cli import main
from squeezenet.compress import prune
from squeezenet.compress.pipeline import Options, compress
from squeezenet.data.transforms import load_image


@pytest.fixture(scope="module")
def small_val(tmp_path_factory):
    """A labels.csv folder with the first 24 images of imagenet-val (absolute paths)."""
    val = shared_path("data/imagenet-val")
    rows = (val / "labels.csv").read_text().splitlines()[1:25]
    root = tmp_path_factory.mktemp("val24")
    (root / "labels.csv").write_text(
        "file,label\n" + "".join(f"{val / r.split(',')[0]},{r.split(',')[1]}\n" for r in rows)
    )
    return root


def test_released_weights_keep_their_masks_at_8_bits(small_val, tmp_path):
    weights = shared_path("weights/deep-compression/compressed_SqueezeNet.net")
    out = tmp_path / "v10.sqz"
    report = compress(weights, out, Options(bits=(8,), eval_data=small_val, progress=False))
    original = squeezenet.load_model(weights).state_dict()
    model = squeezenet.load_model(out)
    for key, value in model.state_dict().items():
        if key.endswith("weight"):
            assert ((value == 0) == (original[key] == 0)).all(), key  # the released masks
            assert len(np.unique(value.numpy())) <= 256
    (result,) = report.results
    assert result.size == out.stat().st_size < 480_000
    assert result.accuracy["top1"] >= report.before["top1"] - 0.05
    assert not out.with_suffix(".pruned.safetensors").exists()  # nothing was pruned


def test_cli_prunes_quantizes_fine_tunes_and_reports(small_val, tmp_path, capsys):
    weights = shared_path("weights/ncnn/squeezenet_v1.1.ncnn.param")
    data = shared_path("data/imagenette/train")
    out = tmp_path / "v11.sqz"
    args = [
        "compress", "--weights", str(weights), "--bits", "6,3", "--data", str(data),
        "--sparsity", "*.expand3x3=0.4,conv10=0.3", "--eval", str(small_val), "-o", str(out),
        "--images", "16", "--prune-steps", "2", "--prune-epochs", "1", "--epochs", "1", "--json",
        "--method", "magnitude",
    ]  # fmt: skip
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["before"]["n"] == 24 and report["float32_bytes"] == 4 * 1_235_496
    assert [r["bits"] for r in report["results"]] == [6, 3]
    for result, bits in zip(report["results"], (6, 3), strict=True):
        path = tmp_path / f"v11-{bits}bit.sqz"
        assert result["bytes"] == path.stat().st_size
        model = squeezenet.load_model(path)
        assert result["accuracy"]["top1"] == pytest.approx(_top1(model, small_val))  # the file's
        assert model.weights_info.preprocess.name == "torchvision"
        densities = prune.resolve_profile("keep", model)
        assert densities["fire9.expand3x3"] == pytest.approx(0.4, abs=1e-3)
        assert densities["conv10"] == pytest.approx(0.3, abs=1e-3)
        assert densities["fire9.squeeze"] > 0.99
        for module in prune.layer_roles(model).values():
            values = module.weight.detach().numpy()
            assert len(np.unique(values[values != 0])) <= 2**bits - 1
    assert report["results"][1]["bytes"] < report["results"][0]["bytes"]
    assert (tmp_path / "v11.png").read_bytes().startswith(b"\x89PNG")
    assert (tmp_path / "v11.pruned.safetensors").exists()

    args[args.index("--bits") + 1] = "5"
    assert main([*args, "--resume"]) == 0  # reuses the pruned model
    (result,) = json.loads(capsys.readouterr().out)["results"]
    assert result["bits"] == 5 and out.exists()


def test_cli_errors_are_one_line(tmp_path, capsys):
    weights = shared_path("weights/ncnn/squeezenet_v1.1.ncnn.param")
    base = ["compress", "--weights", str(weights), "-o", str(tmp_path / "x.sqz")]
    assert main([*base, "--sparsity", "most"]) == 2
    assert "--sparsity 'most'" in capsys.readouterr().err
    assert main([*base, "--method", "obs"]) == 2
    assert "--method obs needs images (--data)" in capsys.readouterr().err
    assert main([*base, "--bits", "9"]) == 2
    assert "--bits: expected an integer in 1..8, got 9" in capsys.readouterr().err
    assert main(["compress", "--weights", str(weights), "-o", "/no/such/dir/x.sqz"]) == 2
    assert "folder /no/such/dir does not exist" in capsys.readouterr().err


def test_obs_stays_closer_to_the_original_than_magnitude(tmp_path):
    """Same profile and bits, no fine-tuning: obs's file gives logits nearer the original's."""
    weights = shared_path("weights/ncnn/squeezenet_v1.1.ncnn.param")
    data = shared_path("data/imagenette/train")
    original = squeezenet.load_model(weights)
    x = torch.stack([original.weights_info.preprocess(load_image(f)) for f in _photos()])
    with torch.no_grad():
        reference = original(x)
    errors = {}
    for method in ("obs", "magnitude"):
        out = tmp_path / f"{method}.sqz"
        options = Options(
            bits=(4,), sparsity="*.expand3x3=0.5,conv10=0.4", method=method, data=data,
            images=16, calibration=16, prune_steps=1, prune_epochs=0, epochs=0, progress=False,
        )  # fmt: skip
        compress(weights, out, options)
        model = squeezenet.load_model(out)
        densities = prune.resolve_profile("keep", model)
        assert densities["conv10"] == pytest.approx(0.4, abs=2e-3), method
        assert densities["fire9.expand3x3"] == pytest.approx(0.5, abs=2e-3), method
        with torch.no_grad():
            errors[method] = (model(x) - reference).square().mean().item()
    assert errors["obs"] < 0.7 * errors["magnitude"], errors


def _top1(model: torch.nn.Module, folder) -> float:
    """Top-1 of ``model`` on a labels.csv folder, image by image (independent of ``evaluate``)."""
    rows = [r.split(",") for r in (folder / "labels.csv").read_text().splitlines()[1:]]
    preprocess = model.weights_info.preprocess
    with torch.no_grad():
        hits = [
            model(preprocess(load_image(f))[None]).argmax().item() == int(label)
            for f, label in rows
        ]
    return sum(hits) / len(hits)


def _photos() -> list:
    return sorted(shared_path("data/photos").glob("*.jpg"))
