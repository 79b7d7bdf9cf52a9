"""Where a passphrase comes from: a file, then BCFL_PASSPHRASE, then a hidden prompt.

The file and the environment variable exist for scripts and tests; a person at a terminal is
prompted without echo. Without a terminal and without either source we fail instead of hanging.
"""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path

from bcfl_cli.errors import IdentityError

ENV_VAR = "BCFL_PASSPHRASE"
MAX_PASSPHRASE_BYTES = 4096


def passphrase_from(passphrase_file: Path | None, *, confirm: bool) -> bytes:
    if passphrase_file is not None:
        return _from_file(passphrase_file)
    env = os.environ.get(ENV_VAR)
    if env is not None:
        return _checked(env.encode("utf-8"), f"${ENV_VAR}")
    if not sys.stdin.isatty():
        raise IdentityError(
            "no passphrase given and no terminal to ask on",
            hint=f"use --passphrase-file FILE or set {ENV_VAR}",
        )
    first = getpass.getpass("Passphrase: ")
    if confirm and getpass.getpass("Repeat passphrase: ") != first:
        raise IdentityError("the two passphrases differ")
    return _checked(first.encode("utf-8"), "the prompt")


def _from_file(path: Path) -> bytes:
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_PASSPHRASE_BYTES + 2)
    except OSError as exc:
        raise IdentityError(f"cannot read passphrase file {path}: {exc.strerror}") from exc
    # One trailing newline is what `echo secret > file` adds; it is not part of the passphrase.
    if data.endswith(b"\r\n"):
        data = data[:-2]
    elif data.endswith(b"\n"):
        data = data[:-1]
    return _checked(data, str(path))


def _checked(passphrase: bytes, source: str) -> bytes:
    if not passphrase:
        raise IdentityError(f"empty passphrase from {source}")
    if len(passphrase) > MAX_PASSPHRASE_BYTES:
        raise IdentityError(f"passphrase from {source} is longer than {MAX_PASSPHRASE_BYTES} bytes")
    return passphrase
