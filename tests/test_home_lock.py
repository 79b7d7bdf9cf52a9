"""One node per home: the lock ``bcfl node`` holds on its home (issue 16, item 15)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bcfl_cli.errors import NodeError
from bcfl_cli.home import Home, HomeLock


def test_a_held_home_refuses_a_second_lock_and_names_the_holder(tmp_path: Path) -> None:
    home = Home.resolve(tmp_path / "h")
    with HomeLock.acquire(home):
        with pytest.raises(NodeError) as refused:
            HomeLock.acquire(home)
        assert f"pid {os.getpid()}" in refused.value.message
        assert refused.value.exit_code == 1
        assert refused.value.hint and "--home" in refused.value.hint
    with HomeLock.acquire(home) as again:  # released on exit, and again
        again.release()
        again.release()


def test_lock_file_is_private_and_homes_are_independent(tmp_path: Path) -> None:
    one, two = Home.resolve(tmp_path / "one"), Home.resolve(tmp_path / "two")
    with HomeLock.acquire(one), HomeLock.acquire(two):
        assert one.lock_file.stat().st_mode & 0o077 == 0
        assert one.lock_file.read_text().strip() == str(os.getpid())


def test_an_unwritable_home_is_a_clear_error(tmp_path: Path) -> None:
    home = Home.resolve(tmp_path / "h")
    home.ensure()
    (home.root / "node").write_text("not a directory")
    with pytest.raises(NodeError) as refused:
        HomeLock.acquire(home)
    assert "cannot open the lock file" in refused.value.message
