"""``squeezenet compare`` on a tiny real Imagenette subset: table, JSON, chart, resumable."""

from __future__ import annotations

import json

from test_train import make_subset

from squeezenet.cli import main
from squeezenet.engine.compare import COLUMNS
from squeezenet.models import build_model
from squeezenet.models.stats import model_stats

ARGS = ["--archs", "squeezenet1_1,alexnet", "--epochs", "1", "--image-size", "64",
        "--batch-size", "8", "--workers", "0", "--no-progress"]  # fmt: skip


def test_compare_writes_table_json_and_chart(shared, tmp_path, capsys):
    data = make_subset(tmp_path / "data", shared, {"train": 8, "val": 4})
    out = tmp_path / "cmp"
    assert main(["compare", str(data), "--out", str(out), *ARGS]) == 0
    printed = capsys.readouterr().out
    table = (out / "compare.md").read_text()
    assert table in printed
    lines = table.splitlines()
    assert lines[0] == "| " + " | ".join(h for h, _ in COLUMNS.values()) + " |"
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| squeezenet1_1", "| alexnet"]
    rows = json.loads((out / "compare.json").read_text())
    for row in rows:
        stats = model_stats(build_model(row["arch"], num_classes=4), 64)
        assert row["params_m"] == stats["params"] / 1e6
        assert row["size_mb"] == 4 * stats["params"] / 1e6
        assert row["gmacs"] == stats["macs"] / 1e9
        assert row["top5"] == 1.0  # 4 classes: the label is always among the top 5
        assert row["top1"] * 16 == round(row["top1"] * 16)  # a count of the 16 val images
        assert row["train_img_s"] > 0 and row["latency_b1_ms"] > 0 and row["latency_b20_ms"] > 0
        metrics = (out / row["arch"] / "metrics.jsonl").read_text().splitlines()
        assert json.loads(metrics[-1])["val_top1"] == row["top1"]
    assert rows[1]["params_m"] > 50 * rows[0]["params_m"]  # AlexNet vs SqueezeNet
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"
    # Run again: finished runs are resumed, not retrained, and give the same accuracies.
    assert main(["compare", str(data), "--out", str(out), *ARGS]) == 0
    again = json.loads((out / "compare.json").read_text())
    assert [(r["top1"], r["top5"]) for r in again] == [(r["top1"], r["top5"]) for r in rows]
    # ... and keep the training time of the run that trained them
    assert [r["train_min"] for r in again] == [r["train_min"] for r in rows]
    assert all(r["train_min"] > 0 for r in rows)


def test_compare_unknown_arch_is_a_clear_error(tmp_path, capsys):
    assert main(["compare", str(tmp_path), "--archs", "squeezenet1_1,resnet50"]) == 2
    assert "unknown architecture(s) resnet50" in capsys.readouterr().err
