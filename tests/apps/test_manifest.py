"""The app's source manifest (PROTOCOL.md, "The model app pin"): format, what counts, limits."""

from __future__ import annotations

import hashlib
import os
import string
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bcfl_cli.apps.manifest import differing_files, read_manifest
from bcfl_cli.errors import AppError
from bcfl_cli.protocol.manifest import manifest_hash, manifest_text


def _write(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def test_manifest_is_sha256sum_lines_sorted_by_path(tmp_path: Path) -> None:
    _write(tmp_path, {"pkg/b.py": b"b", "pkg/a.py": b"a", "pkg/sub/c.txt": b"c"})
    found = read_manifest(tmp_path / "pkg")
    sha = {k: hashlib.sha256(v).hexdigest() for k, v in {"a": b"a", "b": b"b", "c": b"c"}.items()}
    expected = f"{sha['a']}  pkg/a.py\n{sha['b']}  pkg/b.py\n{sha['c']}  pkg/sub/c.txt\n"
    assert manifest_text(found.files) == expected
    assert found.hash == hashlib.sha256(expected.encode()).hexdigest()


def test_bytecode_and_hidden_files_are_left_out(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "pkg/__init__.py": b"",
            "pkg/__pycache__/x.cpython-311.pyc": b"junk",
            "pkg/stale.pyc": b"junk",
            "pkg/.DS_Store": b"junk",
            "pkg/.git/HEAD": b"junk",
        },
    )
    assert list(read_manifest(tmp_path / "pkg").files) == ["pkg/__init__.py"]


def test_a_single_module_app_is_its_one_file(tmp_path: Path) -> None:
    _write(tmp_path, {"solo.py": b"x = 1\n"})
    assert list(read_manifest(tmp_path / "solo.py").files) == ["solo.py"]


@pytest.mark.skipif(os.name == "nt", reason="symlinks")
def test_a_symbolic_link_is_refused(tmp_path: Path) -> None:
    _write(tmp_path, {"pkg/__init__.py": b"", "elsewhere.py": b""})
    (tmp_path / "pkg" / "link.py").symlink_to(tmp_path / "elsewhere.py")
    with pytest.raises(AppError, match="link"):
        read_manifest(tmp_path / "pkg")


def test_differences_are_named() -> None:
    pinned = {"p/a.py": "1" * 64, "p/b.py": "2" * 64}
    found = {"p/a.py": "1" * 64, "p/b.py": "3" * 64, "p/c.py": "4" * 64}
    assert differing_files(pinned, found) == ["p/b.py (changed)", "p/c.py (not in the pin)"]
    assert differing_files(pinned, {"p/a.py": "1" * 64}) == ["p/b.py (missing)"]


paths = st.text(string.ascii_lowercase + "/_.", min_size=1, max_size=20)
digests = st.text("0123456789abcdef", min_size=64, max_size=64)


@given(st.dictionaries(paths, digests, min_size=1, max_size=8))
def test_the_hash_does_not_depend_on_listing_order(files: dict[str, str]) -> None:
    reversed_files = dict(reversed(list(files.items())))
    assert manifest_hash(files) == manifest_hash(reversed_files)
    assert manifest_text(files).count("\n") == len(files)
