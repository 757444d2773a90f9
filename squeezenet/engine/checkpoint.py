"""Training state on disk: written atomically, read back with clear errors.

``RUN_DIR/state.pt`` holds everything ``--resume`` needs (config, model, optimizer, scheduler,
epoch, step, metrics so far, RNG states); ``best.safetensors`` and ``last.safetensors`` beside
it are ordinary weights files in the project's format. ``state.pt`` is read with
``torch.load(weights_only=True)``: tensors, plain Python values and numeric NumPy arrays and
scalars load; any other pickled object, which could run code, is refused.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from ..errors import SqueezeNetError
from ..io import atomic_torch_save

STATE_FILE = "state.pt"
STATE_VERSION = 2  # 2: progress holds plain values only (named fields, no NumPy)

# Beyond tensors and plain Python values, a state may hold numeric NumPy arrays and scalars (the
# NumPy RNG state is a uint32 array). Rebuilding those runs no code; object arrays stay refused.
_NUMERIC_DTYPES = [
    np.dtypes.BoolDType,
    *(
        getattr(np.dtypes, f"{kind}{bits}DType")
        for kind in ("Int", "UInt")
        for bits in (8, 16, 32, 64)
    ),
    *(getattr(np.dtypes, f"Float{bits}DType") for bits in (16, 32, 64)),
]
_NUMPY_GLOBALS = [
    np._core.multiarray._reconstruct,
    np._core.multiarray.scalar,
    np.ndarray,
    np.dtype,
    *_NUMERIC_DTYPES,
]


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


def step_seed(seed: int, step: int, rank: int) -> int:
    """The torch seed of one optimizer step on one rank (dropout draws from it)."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch alike."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def save_state(run_dir: Path, state: dict) -> None:
    state = {"version": STATE_VERSION, **state, "rng": rng_states()}
    atomic_torch_save(run_dir / STATE_FILE, state)


def load_state(run_dir: Path) -> dict:
    """The saved training state of ``run_dir``; SqueezeNetError when missing or damaged."""
    path = Path(run_dir) / STATE_FILE
    if not path.is_file():
        raise SqueezeNetError(f"{path}: no training state to resume from")
    try:
        with torch.serialization.safe_globals(_NUMPY_GLOBALS):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a damaged zip/pickle
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        refused = [line for line in lines if "GLOBAL" in line or "allowlisted" in line]
        if refused:  # a pickled object other than data: loading it could run code
            reason = refused[0].split(". Please use")[0].split(" Please use")[0]
            raise SqueezeNetError(
                f"{path}: refused: it holds pickled objects other than tensors, numbers and "
                f"arrays, which could run code ({reason[:200]})"
            ) from None
        _, marker, detail = str(e).partition("WeightsUnpickler error:")
        reason = (detail.strip() if marker else "") or (lines[0] if lines else "")
        reason = (
            f"{type(e).__name__}: {reason.splitlines()[0][:200]}" if reason else type(e).__name__
        )
        raise SqueezeNetError(f"{path}: damaged training state ({reason})") from None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise SqueezeNetError(f"{path}: not a training state written by this version")
    saved = state["config"]
    saved.setdefault("optimizer", "sgd")  # states saved before AdamW was a choice
    saved.setdefault("new_head_lr", 1.0)  # older states: a new classifier moved at lr
    # Older states did not keep the decision; their optimizer state keeps the head's rate.
    saved.setdefault("new_classifier", False)
    return state
