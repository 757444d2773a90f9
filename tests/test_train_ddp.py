"""DDP against one process: 2 gloo ranks under torchrun train the same weights as a single
process at the same global batch, so gradients are averaged over ranks and accumulation steps
exactly as one big batch would average them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import torch
from test_train import make_subset

import squeezenet
from squeezenet.weights.formats import safetensors

# Every recipe option is given, so changes of the defaults leave the comparison alone.
# 32 images in one global batch: one optimizer step. Over several steps float32 rounding can
# flip a ReLU and the two runs part for good (4 steps at batch 8: up to 1.9e-2 of the change,
# measured), which is not what this compares. No weight decay: the weights move by their
# gradients alone. Plain SGD: its first step is lr x the gradient, so a gradient twice too large
# moves the weights twice as far (AdamW's first step is about lr x sign(g) and would hide it).
RECIPE = [
    "--arch", "squeezenet1_1", "--epochs", "1", "--batch-size", "32", "--micro-batch", "2",
    "--lr", "0.02", "--backbone-lr", "1", "--momentum", "0.9", "--weight-decay", "0",
    "--warmup", "0", "--schedule", "linear", "--label-smoothing", "0.1", "--min-scale", "0.25",
    "--image-size", "64", "--seed", "3", "--workers", "0", "--device", "cpu", "--no-bf16",
    "--no-progress", "--optimizer", "sgd",
]  # fmt: skip


def train_cli(data, out, weights, ranks: int) -> subprocess.CompletedProcess:
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks)]
    proc = subprocess.run(
        [sys.executable, *(launcher if ranks > 1 else []), "-m", "squeezenet", "train", str(data),
         "--out", str(out), "--weights", str(weights), *RECIPE],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_two_gloo_ranks_train_the_weights_of_one_process(shared, tmp_path):
    data = make_subset(tmp_path / "data", shared, {"train": 8, "val": 4})
    # Start weights without dropout: its masks are drawn per rank, the one randomness that a
    # split of the batch over processes cannot reproduce.
    torch.manual_seed(0)
    start = squeezenet.create_model("squeezenet1_1", num_classes=4, dropout=0.0)
    squeezenet.save_model(start, tmp_path / "start.safetensors")

    one = train_cli(data, tmp_path / "one", tmp_path / "start.safetensors", ranks=1)
    two = train_cli(data, tmp_path / "two", tmp_path / "start.safetensors", ranks=2)
    # the same global batch, split differently: accumulation on one process, ranks under DDP
    assert "global batch 32 = 1 process(es) x 16 accumulation x 2" in one.stderr
    assert "global batch 32 = 2 process(es) x 8 accumulation x 2" in two.stderr
    assert two.stderr.count("epoch 1/1: train loss") == 1  # only rank 0 reports

    initial = {k: v.numpy() for k, v in start.state_dict().items()}
    single, _ = safetensors.read(tmp_path / "one" / "last.safetensors")
    ddp, _ = safetensors.read(tmp_path / "two" / "last.safetensors")
    assert set(single) == set(ddp) == set(initial)
    for k in initial:
        # Compare what training changed. Sums in another order leave at most 1.5e-4 of the
        # change (float32 rounding, measured); a gradient summed instead of averaged over the
        # accumulation steps gave 0.5 (16 steps on one process, 8 per rank).
        change = single[k] - initial[k]
        error = np.abs((ddp[k] - initial[k]) - change).max() / np.abs(change).max()
        assert error < 1e-2, f"{k}: the 2 ranks' change differs by {error:.1e} of the change"
    # Validation sharded over the ranks measures what one process measures.
    rows = [[json.loads(line) for line in (tmp_path / run / "metrics.jsonl").open()]
            for run in ("one", "two")]  # fmt: skip
    assert [r["val_n"] for r in rows[1]] == [16] * len(rows[0])
    for a, b in zip(*rows, strict=True):
        assert (a["epoch"], a["step"], a["val_top1"]) == (b["epoch"], b["step"], b["val_top1"])
        assert abs(a["val_loss"] - b["val_loss"]) < 1e-5 * a["val_loss"]
