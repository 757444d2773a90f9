"""Two processes with gloo on this machine: DDP + gradient accumulation keep ranks identical."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from test_train import make_subset

from squeezenet.weights.formats import safetensors

WORKER = Path(__file__).with_name("ddp_train_worker.py")


def test_two_gloo_ranks_end_with_identical_weights(shared, tmp_path):
    data = make_subset(tmp_path / "data", shared, {"train": 8, "val": 4})
    out = tmp_path / "runs" / "ddp"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(WORKER), str(data), str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    # global batch 8 = 2 ranks x 2 accumulation x 2 images; 32 images -> 4 steps per epoch
    assert "global batch 8 = 2 process(es) x 2 accumulation x 2" in proc.stderr
    rank0, _ = safetensors.read(tmp_path / "runs" / "rank0.safetensors")
    rank1, _ = safetensors.read(tmp_path / "runs" / "rank1.safetensors")
    saved, _ = safetensors.read(out / "last.safetensors")
    for k in rank0:
        np.testing.assert_array_equal(rank0[k], rank1[k], err_msg=k)
        np.testing.assert_array_equal(rank0[k], saved[k], err_msg=k)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["step"], r["val_n"]) for r in rows] == [(1, 4, 16), (2, 8, 16)]
    assert proc.stderr.count("epoch 2/2: train loss") == 1  # only rank 0 reports
