"""Labelled folders: labels.csv, ImageFolder trees mapped by class names, unreadable images."""

import re

import pytest
import torch
from PIL import Image

import squeezenet
from squeezenet.cli import main
from squeezenet.data.datasets import collate_skipping, labelled_folder, list_images
from squeezenet.errors import SqueezeNetError


def identity(image):
    return torch.zeros(1)


def make_tree(root, classes, n=2):
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (8, 8), (i, 0, 0)).save(root / name / f"{i}.png")


def test_image_folder_maps_folders_through_class_ids(tmp_path):
    make_tree(tmp_path, ["n02", "n01"])
    data = labelled_folder(tmp_path, identity, classes=["n00", "n01", "n02"])
    assert data.labels == [1, 1, 2, 2]  # sorted folders n01, n02 -> their index in classes
    data = labelled_folder(tmp_path, identity, classes=["other"])
    assert data.labels == [0, 0, 1, 1] and data.classes == ["n01", "n02"]


def test_labels_csv_and_its_errors(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "labels.csv").write_text("file,label\na.png,7\n")
    data = labelled_folder(tmp_path, identity)
    assert data.labels == [7] and data.files == [tmp_path / "a.png"]
    (tmp_path / "labels.csv").write_text("file,label\na.png,seven\n")
    with pytest.raises(SqueezeNetError, match=r"labels.csv:2: expected columns file,label"):
        labelled_folder(tmp_path, identity)


def test_empty_class_folder_and_missing_root(tmp_path):
    make_tree(tmp_path, ["a"])
    (tmp_path / "b").mkdir()
    with pytest.raises(SqueezeNetError, match="b: class folder has no images"):
        labelled_folder(tmp_path, identity)
    with pytest.raises(SqueezeNetError, match="no such folder"):
        labelled_folder(tmp_path / "nope", identity)


def test_unreadable_images_are_skipped_and_counted(tmp_path):
    make_tree(tmp_path, ["a"], n=3)
    (tmp_path / "a" / "1.png").write_bytes(b"broken")
    data = labelled_folder(tmp_path, identity)
    x, y, index, skipped = collate_skipping([data[i] for i in range(3)])
    assert skipped == 1 and index.tolist() == [0, 2]


def test_list_images_expands_folders_and_names_missing_paths(tmp_path):
    make_tree(tmp_path, ["a", "b"], n=1)
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in list_images([tmp_path])] == ["0.png", "0.png"]
    with pytest.raises(SqueezeNetError, match="missing.jpg: no such file"):
        list_images([tmp_path / "missing.jpg"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SqueezeNetError, match="no images found"):
        list_images([tmp_path / "empty"])


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            "a.png,0\nb.png,5000\n",
            r"labels.csv:3: label 5000 is outside 0\.\.999 \(the model has",
        ),
        ("a.png,-1\nb.png,1\n", r"labels.csv:2: label -1 is outside 0\.\.999"),
        ("a.png,1\nb.png,2\na.png,1\n", r"labels.csv:4: a.png is listed again \(line 2\)"),
    ],
)
def test_evaluate_names_the_line_of_a_label_the_model_cannot_have(tmp_path, capsys, rows, message):
    """Through the command line: one line naming labels.csv:LINE, exit 2, no 0% reported."""
    for name in ("a.png", "b.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    (tmp_path / "labels.csv").write_text("file,label\n" + rows)
    weights = tmp_path / "m.safetensors"
    squeezenet.save_model(squeezenet.create_model("squeezenet1_1"), weights)
    assert main(["evaluate", str(tmp_path), "--weights", str(weights)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert re.search(message, err), err


def test_a_class_folder_the_model_does_not_know_is_named(tmp_path):
    make_tree(tmp_path, ["n01", "n99"])
    with pytest.raises(SqueezeNetError, match=r"n99: a class folder the model does not know"):
        labelled_folder(tmp_path, identity, classes=["n00", "n01"], num_classes=2)
    with pytest.raises(SqueezeNetError, match=r"has 2 class folders, the model has 1 classes"):
        labelled_folder(tmp_path, identity, classes=["other"], num_classes=1)
