"""Passphrase sources: file (one trailing newline dropped), then BCFL_PASSPHRASE, then a prompt."""

from __future__ import annotations

import io

import pytest

from bcfl_cli.errors import IdentityError
from bcfl_cli.identity import passphrase_from


def test_file_wins_and_loses_one_trailing_newline(tmp_path, monkeypatch):
    monkeypatch.setenv("BCFL_PASSPHRASE", "from env")
    f = tmp_path / "pw"
    f.write_bytes(b"secret \n\n")
    assert passphrase_from(f, confirm=False) == b"secret \n"
    f.write_bytes(b"secret\r\n")
    assert passphrase_from(f, confirm=True) == b"secret"


def test_environment_variable(monkeypatch):
    monkeypatch.setenv("BCFL_PASSPHRASE", "pässword")
    assert passphrase_from(None, confirm=True) == "pässword".encode()


def test_no_source_and_no_terminal_fails_instead_of_hanging(monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    with pytest.raises(IdentityError, match="no passphrase") as info:
        passphrase_from(None, confirm=False)
    assert "BCFL_PASSPHRASE" in (info.value.hint or "")


def test_prompt_with_confirmation(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stdin", Tty())
    answers = iter(["one", "two"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    with pytest.raises(IdentityError, match="differ"):
        passphrase_from(None, confirm=True)
    answers = iter(["same", "same"])
    assert passphrase_from(None, confirm=True) == b"same"


def test_empty_and_missing_files(tmp_path):
    empty = tmp_path / "empty"
    empty.write_bytes(b"\n")
    with pytest.raises(IdentityError, match="empty passphrase"):
        passphrase_from(empty, confirm=False)
    with pytest.raises(IdentityError, match="cannot read"):
        passphrase_from(tmp_path / "missing", confirm=False)
