"""The canonical source manifest of a model app (PROTOCOL.md, "The model app pin").

One line per file, sorted by the path's UTF-8 bytes: the file's SHA-256 in lowercase hex, two
spaces, its path relative to the folder that holds the app's top-level package, a line feed.
That is ``sha256sum``'s output format, so a member can recompute it with standard tools::

    cd site-packages && find my_app -type f ! -path '*/__pycache__/*' ! -path '*/.*' \\
        ! -name '*.pyc' | LC_ALL=C sort | xargs sha256sum | sha256sum

The manifest hash is the SHA-256 of those lines, encoded as UTF-8.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping


def manifest_text(files: Mapping[str, str]) -> str:
    """The manifest lines of ``files`` (relative path -> SHA-256 hex), in canonical order."""
    return "".join(
        f"{files[path]}  {path}\n" for path in sorted(files, key=lambda p: p.encode("utf-8"))
    )


def manifest_hash(files: Mapping[str, str]) -> str:
    """SHA-256 hex of :func:`manifest_text`: the app's ``manifest`` in the genesis."""
    return hashlib.sha256(manifest_text(files).encode("utf-8")).hexdigest()
