"""Shared fixtures: where ../shared is; skips with the reason when it is absent, fails when a
file is missing from it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    return Path(os.environ.get("SQUEEZENET_SHARED", REPO.parent / "shared"))


def shared_path(relative: str) -> Path:
    """Path of a file under ../shared.

    Without the shared folder at all (a lone clone) the test is skipped, saying where it was
    looked for; a file missing from a shared folder that exists fails the test, so that a typo
    or a lost file cannot pass as a skip.
    """
    root = shared_dir()
    if not root.is_dir():
        pytest.skip(
            f"needs the project's shared data at {root} for {relative} "
            "(set SQUEEZENET_SHARED to point elsewhere)"
        )
    path = root / relative
    if not path.exists():
        pytest.fail(f"{path} is missing from the shared data at {root}", pytrace=False)
    return path


@pytest.fixture
def shared():
    return shared_path


@pytest.fixture(scope="session", autouse=True)
def own_home(tmp_path_factory):
    """Caches the tests (and their subprocesses) build go to a folder of their own, never to
    the user's ``~/.cache/squeezenet``."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SQUEEZENET_HOME", str(tmp_path_factory.mktemp("home")))
        yield


def coloured_shapes(root: Path, classes: int = 3, per_class: int = 8, side: int = 48) -> Path:
    """``root/<colour>/<i>.png``: a shape of one colour per class (disc, square, triangle) at a
    random place on a random background, every image distinct; small real data to train on."""
    import random

    from PIL import Image, ImageDraw

    colours = {"red": (200, 30, 30), "green": (30, 180, 40), "blue": (30, 50, 200)}
    for c, (name, colour) in enumerate(list(colours.items())[:classes]):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            rng = random.Random(1000 * c + i)
            image = Image.new("RGB", (side, side), tuple(rng.randrange(256) for _ in range(3)))
            draw, s = ImageDraw.Draw(image), side // 2
            x, y = rng.randrange(side - s), rng.randrange(side - s)
            if c == 0:
                draw.ellipse((x, y, x + s, y + s), fill=colour)
            elif c == 1:
                draw.rectangle((x, y, x + s, y + s), fill=colour)
            else:
                draw.polygon([(x, y + s), (x + s // 2, y), (x + s, y + s)], fill=colour)
            image.save(root / name / f"{i}.png")
    return root
