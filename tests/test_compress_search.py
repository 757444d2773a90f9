"""``compress --target-bytes`` / ``--max-drop``: per-layer bits and densities under a budget."""

import itertools
import json
import math
import re
import struct
import zlib

import numpy as np
import pytest
import torch
from conftest import shared_path

import squeezenet
from squeezenet.cli import main
from squeezenet.compress import pipeline, prune
from squeezenet.compress.pipeline import Options, compress
from squeezenet.compress.report import layer_table
from squeezenet.compress.search import (
    UNIT,
    Choice,
    Knapsack,
    Option,
    apply_plan,
    record_bytes,
    shrink_layer,
)
from squeezenet.weights.formats import sqz

V11 = "weights/ncnn/squeezenet_v1.1.ncnn.param"
# a small search: 8 calibration and 8 held-out images, two widths, two densities
SMALL = dict(calibration=8, holdout=8, search_bits=(2, 4), search_densities=(1.0, 0.5))
BUDGET = 200_000


def test_knapsack_finds_the_least_error_within_every_budget():
    rng = np.random.default_rng(0)
    table = {
        f"layer{i}": [
            Option(Choice(b, 1.0), int(rng.integers(10, 400)), float(rng.random()))
            for b in range(2, 6)
        ]
        for i in range(4)
    }
    knapsack = Knapsack(table)
    for budget in range(0, 1700, 37):
        plan = knapsack.plan(budget)
        feasible = [
            combo
            for combo in itertools.product(*table.values())
            if sum(UNIT * math.ceil(o.nbytes / UNIT) for o in combo) <= budget
        ]
        if not feasible:
            assert plan is None
            continue
        nbytes, error = knapsack.cost(plan)
        assert nbytes <= budget
        assert error == pytest.approx(min(sum(o.error for o in c) for c in feasible))


@pytest.fixture(scope="module")
def ten(tmp_path_factory):
    """A 10-class v1.1 with a new head, saved as safetensors (as ``train`` saves one)."""
    torch.manual_seed(0)
    model = squeezenet.create_model("squeezenet1_1", weights=shared_path(V11), num_classes=10)
    weights = tmp_path_factory.mktemp("model") / "ten.safetensors"
    squeezenet.save_model(model, weights)
    return weights


@pytest.fixture(scope="module")
def searched(ten, tmp_path_factory):
    """The 10-class model compressed twice to BUDGET bytes with the same seed."""
    runs = []
    for name in ("a", "b"):
        out = tmp_path_factory.mktemp(name) / "ten.sqz"
        options = Options(data=shared_path("data/imagenette/train"), target_bytes=BUDGET,
                          progress=False, **SMALL)  # fmt: skip
        runs.append((out, compress(ten, out, options)))
    return runs


def test_target_bytes_is_honoured_and_the_report_is_the_file(searched):
    out, report = searched[0]
    (result,) = report.results
    size = out.stat().st_size
    assert result.size == size <= BUDGET
    assert size > 0.97 * BUDGET  # the budget is used, not wasted
    assert layer_table(result).splitlines()[-1].split()[-1] == f"{size:,d}"
    data = out.read_bytes()  # the records the report shows are the file's header, byte for byte
    (header_bytes,) = struct.unpack_from("<I", data, 6)
    header = json.loads(zlib.decompress(data[10 : 10 + header_bytes]))
    assert [r.to_json() for r in result.records] == header["tensors"]
    assert 10 + header_bytes + sum(r.nbytes for r in result.records) + 4 == size
    model = squeezenet.load_model(out)
    densities = prune.resolve_profile("keep", model)
    layers = prune.layer_roles(model)
    assert set(result.choices) == set(layers)
    for role, choice in result.choices.items():
        values = layers[role].weight.detach().numpy()
        assert len(np.unique(values[values != 0])) <= 2**choice.bits - 1, role
        assert densities[role] == pytest.approx(choice.density, abs=2e-3), role
    assert len({c.bits for c in result.choices.values()}) > 1  # not one setting for all
    chosen = report.search.chosen
    assert chosen.size == size and chosen.accuracy["n"] == 8


def test_fine_tuning_in_a_search_never_sees_the_held_out_images(ten, searched, tmp_path,
                                                                monkeypatch):  # fmt: skip
    """``--epochs`` distils each candidate's centroids on --data's images other than the
    held-out ones, and the file still fits the budget (fine-tuning moves values, not codes)."""
    seen = {"tuned": [], "held": []}
    real_distill, real_accuracy = pipeline.distill, pipeline.heldout_accuracy

    def distill(model, cache, **kwargs):
        seen["tuned"].append(cache.images.clone())
        return real_distill(model, cache, **kwargs)

    def accuracy(model, images, labels):
        seen["held"].append(images.clone())
        return real_accuracy(model, images, labels)

    monkeypatch.setattr(pipeline, "distill", distill)
    monkeypatch.setattr(pipeline, "heldout_accuracy", accuracy)
    out = tmp_path / "tuned.sqz"
    options = Options(data=shared_path("data/imagenette/train"), target_bytes=BUDGET, epochs=1,
                      images=8, label_weight=0, progress=False, **SMALL)  # fmt: skip
    report = compress(ten, out, options)
    assert out.stat().st_size == report.results[0].size <= BUDGET
    assert seen["tuned"] and all(len(t) == 16 for t in seen["tuned"])  # 8 calibration + 8 more
    held = {bytes(image.numpy()) for image in seen["held"][0]}
    assert len(held) == 8
    assert not held & {bytes(image.numpy()) for image in seen["tuned"][0]}
    assert out.read_bytes() != searched[0][0].read_bytes()  # the centroids moved


def test_the_choice_is_deterministic_for_a_seed(searched):
    (first, a), (second, b) = searched
    assert a.results[0].choices == b.results[0].choices
    assert first.read_bytes() == second.read_bytes()


def test_below_the_fixed_overhead_says_why_in_one_line(tmp_path, capsys):
    base = [
        "compress", "--weights", str(shared_path(V11)), "-o", str(tmp_path / "x.sqz"),
        "--data", str(shared_path("data/imagenette/train")),
    ]  # fmt: skip
    assert main([*base, "--target-bytes", "3000"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--target-bytes 3,000: below the" in err and "every weight pruned" in err
    assert len(err.splitlines()) == 1
    assert main([*base, "--target-bytes", "3000", "--max-drop", "1"]) == 2
    assert "not both" in capsys.readouterr().err
    assert main([*base[:5], "--target-bytes", "300000"]) == 2
    assert "needs images (--data)" in capsys.readouterr().err
    assert main([*base, "--max-drop", "-1"]) == 2
    assert "--max-drop: expected a number in [0, 100], got -1" in capsys.readouterr().err
    assert not (tmp_path / "x.sqz").exists()


@pytest.mark.parametrize("density", [1.0, 0.3, 0.004, 0.0])
def test_record_bytes_are_the_containers(density):
    rng = np.random.default_rng(1)
    k = 16
    codes = rng.integers(1, k, (64, 32, 3, 3)) * (rng.random((64, 32, 3, 3)) < density)
    book = np.arange(k, dtype=np.float32)
    _, (record,) = sqz.pack({"w": book[codes]}, {}, {"w": book})
    assert record_bytes(torch.from_numpy(codes), k, "float16") == record.nbytes


def test_a_budget_at_the_fixed_overhead_is_met(ten, tmp_path, capsys):
    data = shared_path("data/imagenette/train")
    args = ["compress", "--weights", str(ten), "--data", str(data), "-o", str(tmp_path / "x.sqz")]
    assert main([*args, "--target-bytes", "100"]) == 2
    floor = int(re.search(r"below the ([\d,]+) bytes", capsys.readouterr().err)[1].replace(",", ""))
    out = tmp_path / "floor.sqz"
    options = Options(data=data, target_bytes=floor, progress=False, **SMALL)
    report = compress(ten, out, options)
    assert out.stat().st_size <= floor
    assert all(c.density == 0 for c in report.results[0].choices.values())
    squeezenet.load_model(out)  # a valid file: every weight zero, the biases kept


def test_shrinking_a_layer_frees_the_bytes_asked_for():
    torch.manual_seed(0)
    model = squeezenet.create_model("squeezenet1_1", num_classes=10)
    roles = prune.layer_roles(model)
    choices = {role: Choice(4, 1.0) for role in roles}
    problems = apply_plan(model, torch.rand(4, 3, 64, 64), choices, progress=False)

    def size(role):
        shared = roles[role].parametrizations.weight[0]
        return record_bytes(shared.codes, 16, "float16")

    before = size("fire9.expand3x3")
    choice = shrink_layer(model, "fire9.expand3x3", problems["fire9.expand3x3"],
                          choices["fire9.expand3x3"], 5_000, "float16")  # fmt: skip
    assert before - 5_000 - 2_000 < size("fire9.expand3x3") <= before - 5_000
    assert choice.bits == 4 and choice.density == pytest.approx(
        prune.density(roles["fire9.expand3x3"].weight), abs=1e-4
    )
