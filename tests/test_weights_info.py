"""WeightsInfo: built from metadata in one way, written back by to_meta, round trip exact."""

from __future__ import annotations

from squeezenet.data.transforms import get_preset
from squeezenet.weights.info import WeightsInfo


def test_to_meta_and_from_meta_round_trip():
    info = WeightsInfo(
        "squeezenet1_0", {"classifier_padding": 1}, 3, get_preset("caffe"),
        classes=["ant", "bee", "cat"], class_ids=["a", "b", "c"], source="m.net",
        sha256="ab" * 32, file_format="deep_compression", entry="squeezenet1_0.deep_compression",
    )  # fmt: skip
    assert WeightsInfo.from_meta(info.to_meta()) == info


def test_from_meta_takes_a_preset_name_and_fields_override():
    meta = {"arch": "squeezenet1_1", "num_classes": 2, "preprocess": "caffe", "source": "old"}
    info = WeightsInfo.from_meta(meta, source="new", file_format="sqz")
    assert info.preprocess == get_preset("caffe") and info.model_kwargs == {}
    assert (info.source, info.file_format, info.label(1)) == ("new", "sqz", "class 1")
    assert WeightsInfo.from_meta({**meta, "preprocess": None}).preprocess.name == "torchvision"


def test_a_1000_class_model_without_names_gets_imagenet_names(shared):
    info = WeightsInfo.from_meta({"arch": "squeezenet1_1", "num_classes": 1000, "classes": None})
    assert len(info.classes) == len(info.class_ids) == 1000
    assert info.class_ids[0] == "n01440764" and info.label(0) == "tench"
