"""Training state (state.pt): a real state round-trips; a pickle that would run code is refused."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from squeezenet.engine.checkpoint import STATE_FILE, load_state, save_state
from squeezenet.errors import SqueezeNetError
from squeezenet.models import build_model


def test_a_training_state_round_trips_weights_only(tmp_path):
    """Model, SGD and LambdaLR states, plain values, NumPy scalars and RNG states load back."""
    model = build_model("squeezenet1_1", num_classes=4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    confusion = np.arange(16).reshape(4, 4).tolist()
    save_state(tmp_path, {
        "config": {"lr": 0.1, "arch": "squeezenet1_1", "weights": None},
        "preset": {"mean": (0.485, 0.456, 0.406)}, "model": model.state_dict(),
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "progress": {"step": 3, "history": [{"val_top1": np.float64(0.5)}], "confusion": confusion},
    })  # fmt: skip
    state = load_state(tmp_path)
    assert state["progress"]["confusion"] == confusion
    assert state["progress"]["history"] == [{"val_top1": 0.5}]
    assert state["optimizer"]["param_groups"][0]["nesterov"] is True
    for key, value in model.state_dict().items():
        assert torch.equal(state["model"][key], value), key
    assert state["rng"]["numpy"][1].dtype == np.uint32


class RunsCode:
    """Unpickling this would call os.system: the attack a shared run folder allows."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_state_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"version": 1, "config": RunsCode(marker)}, tmp_path / STATE_FILE)
    with pytest.raises(SqueezeNetError) as error:
        load_state(tmp_path)
    message = str(error.value)
    assert "\n" not in message and message.startswith(str(tmp_path / STATE_FILE))
    assert "refused" in message and "system" in message
    assert not marker.exists()


@pytest.mark.parametrize("data", [b"garbage", b"PK\x03\x04 not a zip", b""])
def test_a_damaged_state_is_named_in_one_line(tmp_path, data):
    (tmp_path / STATE_FILE).write_bytes(data)
    with pytest.raises(SqueezeNetError, match="damaged training state") as error:
        load_state(tmp_path)
    assert "\n" not in str(error.value)
