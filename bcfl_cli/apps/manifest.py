"""The source manifest of an installed app, read from disk (PROTOCOL.md, "The model app pin").

What counts: every regular file under the app's top-level package folder (or the one module
file of a single-module app), paths relative to the folder that holds it, except bytecode
(``__pycache__/``, ``*.pyc``, ``*.pyo``) and hidden names (``.git/``, ``.DS_Store``), which
differ between members' machines without changing the source. A symbolic link is refused: what
it points at could change without the manifest changing.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from bcfl_cli.errors import AppError
from bcfl_cli.protocol.manifest import manifest_hash
from bcfl_cli.protocol.spec import MAX_APP_FILES, MAX_APP_PATH_CHARS

#: Bytes an app's source may hold in all: a wrong root (a home directory, a data set) fails
#: fast instead of hashing a disk.
MAX_APP_SOURCE_BYTES = 256 * 1024 * 1024
_SKIPPED_SUFFIXES = (".pyc", ".pyo")


@dataclass(frozen=True)
class SourceManifest:
    """The app's files (relative path -> SHA-256 hex) and the manifest hash over them."""

    root: Path  #: the folder the relative paths start from
    files: dict[str, str]

    @property
    def hash(self) -> str:
        return manifest_hash(self.files)


def _skipped(name: str) -> bool:
    return name == "__pycache__" or name.startswith(".") or name.endswith(_SKIPPED_SUFFIXES)


def _file_hash(path: Path, budget: list[int]) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            budget[0] -= len(chunk)
            if budget[0] < 0:
                raise AppError(
                    f"{path}: the app's source is larger than {MAX_APP_SOURCE_BYTES} bytes",
                    hint="is the app's package folder the right one?",
                )
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(source: Path) -> SourceManifest:
    """The manifest of ``source``: a package folder or a single module file."""
    source = source.resolve()
    root = source.parent
    if source.is_file():
        candidates = [source]
    elif source.is_dir():
        candidates = []
        for folder, dirs, names in os.walk(source, followlinks=False):
            dirs[:] = sorted(d for d in dirs if not _skipped(d))
            for d in dirs:
                if (Path(folder) / d).is_symlink():
                    raise AppError(f"{Path(folder) / d}: a symbolic link in the app's source")
            candidates.extend(Path(folder) / n for n in sorted(names) if not _skipped(n))
            if len(candidates) > MAX_APP_FILES:
                raise AppError(f"{source}: more than {MAX_APP_FILES} files in the app's source")
    else:
        raise AppError(f"{source}: no such app source")
    budget = [MAX_APP_SOURCE_BYTES]
    files: dict[str, str] = {}
    for path in candidates:
        rel = path.relative_to(root).as_posix()
        if path.is_symlink() or not path.is_file():
            raise AppError(f"{path}: not a regular file (links are refused in an app's source)")
        if len(rel) > MAX_APP_PATH_CHARS or not rel.isprintable():
            raise AppError(f"{path}: the path is not printable or longer than 256 characters")
        files[rel] = _file_hash(path, budget)
    if not files:
        raise AppError(f"{source}: the app's source holds no file")
    return SourceManifest(root, files)


def differing_files(pinned: dict[str, str], found: dict[str, str]) -> list[str]:
    """Paths that differ between the pin and the installed source, each with how."""
    out = []
    for path in sorted(set(pinned) | set(found)):
        if path not in found:
            out.append(f"{path} (missing)")
        elif path not in pinned:
            out.append(f"{path} (not in the pin)")
        elif pinned[path] != found[path]:
            out.append(f"{path} (changed)")
    return out
