"""Hub-shaped folders: save -> load gives the same logits (from the folder and from an offline
Hub cache), the card's model-index is evaluate's result, the config holds predict's
preprocessing, push sends the folder to the named repo, and bad folders are one line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import squeezenet
from squeezenet.cli import main
from squeezenet.data.transforms import load_image
from squeezenet.inference.pipeline import evaluate
from squeezenet.weights.hub import preprocess_from_timm

huggingface_hub = pytest.importorskip("huggingface_hub", reason="the 'hub' extra is not installed")

DC = "weights/deep-compression/compressed_SqueezeNet.net"
NCNN = "weights/ncnn/squeezenet_v1.1.ncnn.param"
PHOTOS = ["chelsea.png", "coffee.png", "cat.jpg"]


def fine_tuned(shared, tmp_path) -> Path:
    """A 10-class model with a classifier of its own and class names, as a training run saves."""
    model = squeezenet.create_model("squeezenet1_1", weights=shared(NCNN), num_classes=10)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.classifier.parameters():
            p.normal_(0, 0.05)
    model.weights_info.classes = [f"class {k}" for k in range(10)]
    model.weights_info.class_ids = [f"n{k:08d}" for k in range(10)]
    path = tmp_path / "ten.safetensors"
    squeezenet.save_model(model, path)
    return path


@pytest.fixture(params=["v1_0", "v1_1", "ten"])
def weights(request, shared, tmp_path):
    return {"v1_0": lambda: shared(DC), "v1_1": lambda: shared(NCNN),
            "ten": lambda: fine_tuned(shared, tmp_path)}[request.param]()  # fmt: skip


def logits(model, shared) -> torch.Tensor:
    info = model.weights_info
    x = torch.stack([info.preprocess(load_image(shared(f"data/photos/{p}"))) for p in PHOTOS])
    with torch.no_grad():
        return model(x)


def test_a_saved_folder_loads_to_the_same_logits_and_preprocessing(weights, shared, tmp_path):
    out = tmp_path / "folder"
    assert main(["hub", "save", "--weights", str(weights), "-o", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
    ]
    original, loaded = squeezenet.load_model(weights), squeezenet.load_model(out)
    assert loaded.weights_info.preprocess == original.weights_info.preprocess
    assert loaded.weights_info.classes == original.weights_info.classes
    assert torch.equal(logits(loaded, shared), logits(original, shared))
    config = json.loads((out / "config.json").read_text())
    assert preprocess_from_timm(config["pretrained_cfg"]) == original.weights_info.preprocess
    assert config["architecture"] == original.weights_info.arch
    assert config["pretrained_cfg"]["input_size"][1] == original.weights_info.preprocess.crop


def hub_cache(folder: Path, cache: Path, repo: str, commit: str, ref: str = "main") -> None:
    """Lay ``folder`` out as huggingface_hub's cache holds a downloaded snapshot."""
    root = cache / f"models--{repo.replace('/', '--')}"
    shutil.copytree(folder, root / "snapshots" / commit)
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / ref).write_text(commit)


def test_hf_hub_names_load_from_the_cache_offline(shared, tmp_path):
    out, cache = tmp_path / "folder", tmp_path / "cache"
    assert main(["hub", "save", "--weights", str(shared(NCNN)), "-o", str(out)]) == 0
    hub_cache(out, cache, "someone/squeezenet-v1.1", "a" * 40)
    hub_cache(out, cache, "someone/squeezenet-v1.1", "b" * 40, ref="v1")
    expected = logits(squeezenet.load_model(shared(NCNN)), shared).numpy()
    script = (
        "import sys, numpy as np, torch, squeezenet\n"
        "from squeezenet.data.transforms import load_image\n"
        "m = squeezenet.load_model(sys.argv[1])\n"
        "x = torch.stack([m.weights_info.preprocess(load_image(p)) for p in sys.argv[3:]])\n"
        "np.save(sys.argv[2], m(x).detach().numpy())\n"
    )
    photos = [str(shared(f"data/photos/{p}")) for p in PHOTOS]
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "PATH": "/usr/bin:/bin"}
    for spec in ("hf-hub:someone/squeezenet-v1.1", "hf-hub:someone/squeezenet-v1.1@v1"):
        done = subprocess.run(
            [sys.executable, "-c", script, spec, tmp_path / "l.npy", *photos],
            env={**env, "PYTHONPATH": str(Path(squeezenet.__file__).parents[1])},
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        np.testing.assert_array_equal(np.load(tmp_path / "l.npy"), expected)
    done = subprocess.run(
        [sys.executable, "-m", "squeezenet", "predict", photos[0], "--weights", "hf-hub:no/such"],
        env={**env, "PYTHONPATH": str(Path(squeezenet.__file__).parents[1])},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "hf-hub:no/such" in done.stderr


def test_the_card_holds_evaluate_results_and_facts(shared, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    rows = [row.split(",") for row in shared("data/imagenet-val/labels.csv").read_text().split()]
    for file, _ in rows[1:13]:
        shutil.copy(shared(f"data/imagenet-val/{file}"), data)
    lines = [f"{Path(file).name},{label}" for file, label in rows[1:13]]
    (data / "labels.csv").write_text("file,label\n" + "\n".join(lines) + "\n")
    out = tmp_path / "folder"
    argv = ["hub", "save", "--weights", str(shared(DC)), "-o", str(out), "--eval", str(data)]
    assert main([*argv, "--no-progress"]) == 0
    card = huggingface_hub.ModelCard.load(out / "README.md")
    results = card.data.eval_results
    expected = evaluate(squeezenet.load_model(shared(DC)), data, progress=False)
    assert [(r.metric_name, r.metric_value) for r in results] == [
        ("top-1", expected["top1"]), ("top-5", expected["top5"])
    ]  # fmt: skip
    assert results[0].dataset_name == f"data ({expected['n']} images)"
    assert card.data.pipeline_tag == "image-classification"
    assert card.data.license == "bsd-2-clause"
    assert "1,248,424" in card.text  # parameters of v1.0, counted from the model


def test_push_sends_the_folder_to_the_named_repo(shared, tmp_path, monkeypatch, capsys):
    out = tmp_path / "folder"
    assert main(["hub", "save", "--weights", str(shared(NCNN)), "-o", str(out)]) == 0
    sent = {}

    def create_repo(self, repo_id, **kwargs):
        sent["created"] = repo_id

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        sent["repo"] = repo_id
        sent["files"] = sorted(p.name for p in Path(folder_path).iterdir())

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    assert main(["hub", "push", str(out), "someone/squeezenet-v1.1"]) == 0
    assert sent == {
        "created": "someone/squeezenet-v1.1", "repo": "someone/squeezenet-v1.1",
        "files": ["README.md", "config.json", "model.safetensors"],
    }  # fmt: skip


def test_bad_folders_are_one_line(shared, tmp_path, capsys):
    out = tmp_path / "folder"
    assert main(["hub", "save", "--weights", str(shared(NCNN)), "-o", str(out)]) == 0
    photo = str(shared("data/photos/cat.jpg"))
    config = json.loads((out / "config.json").read_text())

    def fails(folder: Path, message: str) -> None:
        capsys.readouterr()
        assert main(["predict", photo, "--weights", str(folder)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err

    empty = tmp_path / "empty"
    empty.mkdir()
    fails(empty, "no config.json")
    (out / "config.json").write_text(json.dumps({**config, "architecture": "resnet50"}))
    fails(out, "resnet50")
    (out / "config.json").write_text(json.dumps({**config, "architecture": "squeezenet1_0"}))
    fails(out, "weights do not fit squeezenet1_0")
    (out / "config.json").write_text(json.dumps({**config, "num_classes": 10}))
    fails(out, "weights do not fit squeezenet1_1")
    (out / "config.json").write_text("{not json")
    fails(out, "not a model config")
