"""``shared_path``: a clone without the shared folder skips with the reason; a file missing
from a shared folder that exists fails, so that a typo or a lost file cannot pass as a skip."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import shared_path


def test_a_file_missing_from_the_shared_folder_fails(tmp_path, monkeypatch):
    monkeypatch.setenv("SQUEEZENET_SHARED", str(tmp_path))
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "real.net").write_bytes(b"x")
    assert shared_path("weights/real.net") == tmp_path / "weights" / "real.net"
    with pytest.raises(pytest.fail.Exception, match="weights/typo.net is missing"):
        shared_path("weights/typo.net")


def test_without_the_shared_folder_the_test_is_skipped_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("SQUEEZENET_SHARED", str(tmp_path / "absent"))
    with pytest.raises(pytest.skip.Exception, match="needs the project's shared data at .*absent"):
        shared_path("weights/real.net")


def test_tests_build_their_caches_outside_the_users_home(tmp_path_factory):
    home = Path(os.environ["SQUEEZENET_HOME"])
    assert home.is_relative_to(tmp_path_factory.getbasetemp())
