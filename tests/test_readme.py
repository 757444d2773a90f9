"""The README's first Python example runs as written, from the repository root with the shared
data beside it (read from README.md when the test runs, so that it follows every edit)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from conftest import REPO, shared_dir


def first_python_block(text: str) -> str:
    block = re.search(r"^```python\n(.*?)^```", text, re.S | re.M)
    assert block, "README.md has no ```python block"
    return block[1]


def test_the_first_python_example_of_the_readme_runs(shared, tmp_path):
    shared("weights")  # skips without the shared data
    code = first_python_block((REPO / "README.md").read_text(encoding="utf-8"))
    # The repository root as the example sees it, with ../shared beside it; what the example
    # writes lands in this copy, not in the checkout.
    root = tmp_path / "repo"
    root.mkdir()
    for entry in REPO.iterdir():
        if entry.name not in (".git", ".venv"):
            (root / entry.name).symlink_to(entry)
    (tmp_path / "shared").symlink_to(shared_dir())
    env = {**os.environ, "PYTHONPATH": str(REPO), "SQUEEZENET_SHARED": str(tmp_path / "shared")}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, f"the README's example failed:\n{code}\n{out.stderr[-3000:]}"
