"""Shared fixtures: where ../shared is, and skips with a clear reason when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    return Path(os.environ.get("SQUEEZENET_SHARED", REPO.parent / "shared"))


def shared_path(relative: str) -> Path:
    """Path of a file under ../shared, or skip the test saying where it was looked for."""
    path = shared_dir() / relative
    if not path.exists():
        pytest.skip(
            f"needs {relative} from the project's shared data at {shared_dir()} "
            "(set SQUEEZENET_SHARED to point elsewhere)"
        )
    return path


@pytest.fixture
def shared():
    return shared_path
