"""Scratch files a crash leaves in a blob store's ``tmp/``, swept when the node starts.

Aggregates, updates and stored blobs are written to ``tmp/`` and renamed into place; a process
killed in between leaves the file behind, and a 110M-parameter model's is 440 MB each time.
A resumable download parks its checked chunks as ``fetch-*.part`` for the next attempt, which
may never come. Nothing else removes them.

The node sweeps once it holds its home's lock, so no other node writes there; a ``bcfl train``,
``verify-chain --deep`` or download running beside it still may, so only what nobody has
written to for ``SCRATCH_STALE_S`` goes (an active writer touches its file with every piece).
Partial *uploads* (``up-*.part``) have their own rule, in ``node/blob_routes``.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

#: A scratch file or folder untouched this long is a crash's leftover (no writer is that slow).
SCRATCH_STALE_S = 3600.0

#: What this module may remove: the prefixes its writers use, never anything else in ``tmp/``.
SCRATCH_FILES = ("aggregate-", "update-", "in-", "fetch-")
SCRATCH_DIRS = ("models-",)


@dataclass(frozen=True)
class Swept:
    entries: int
    bytes: int


def _newest_mtime(path: Path) -> float:
    newest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        for child in path.iterdir():
            newest = max(newest, child.lstat().st_mtime)
    return newest


def _size(path: Path) -> int:
    if path.is_dir() and not path.is_symlink():
        return sum(c.lstat().st_size for c in path.iterdir() if c.is_file())
    return path.lstat().st_size


def sweep_scratch(
    blob_root: Path, *, now: float | None = None, stale_s: float = SCRATCH_STALE_S
) -> Swept:
    """Remove stale scratch entries of the store at ``blob_root``; what it removed."""
    tmp = Path(blob_root) / "tmp"
    if not tmp.is_dir():
        return Swept(0, 0)
    horizon = (time.time() if now is None else now) - stale_s
    entries = freed = 0
    for path in sorted(tmp.iterdir()):
        name = path.name
        is_file = path.is_file() and not path.is_symlink()
        is_dir = path.is_dir() and not path.is_symlink()
        if not (
            (is_file and name.startswith(SCRATCH_FILES))
            or (is_dir and name.startswith(SCRATCH_DIRS))
        ):
            continue
        try:
            if _newest_mtime(path) >= horizon:
                continue
            size = _size(path)
            if is_dir:
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError:  # gone meanwhile, or not ours to remove: leave it
            continue
        entries += 1
        freed += size
    if entries:
        log.info("removed %d scratch files a crash left in %s (%d bytes)", entries, tmp, freed)
    return Swept(entries, freed)


__all__ = ["SCRATCH_DIRS", "SCRATCH_FILES", "SCRATCH_STALE_S", "Swept", "sweep_scratch"]
