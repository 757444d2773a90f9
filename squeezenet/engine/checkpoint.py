"""Training state on disk: written atomically, read back with clear errors.

``RUN_DIR/state.pt`` holds everything ``--resume`` needs (config, model, optimizer, scheduler,
epoch, step, metrics so far, RNG states); ``best.safetensors`` and ``last.safetensors`` beside
it are ordinary weights files in the project's format.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from ..errors import SqueezeNetError
from ..io import atomic_output

STATE_FILE = "state.pt"
STATE_VERSION = 1


def rng_states() -> dict:
    """RNG states of Python, NumPy and torch (and CUDA when present)."""
    states = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_state(run_dir: Path, state: dict) -> None:
    state = {"version": STATE_VERSION, **state, "rng": rng_states()}
    with atomic_output(run_dir / STATE_FILE) as tmp:
        torch.save(state, tmp)


def load_state(run_dir: Path) -> dict:
    """The saved training state of ``run_dir``; SqueezeNetError when missing or damaged."""
    path = Path(run_dir) / STATE_FILE
    if not path.is_file():
        raise SqueezeNetError(f"{path}: no training state to resume from")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises several types for a damaged zip/pickle
        raise SqueezeNetError(f"{path}: damaged training state ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise SqueezeNetError(f"{path}: not a training state written by this version")
    return state
