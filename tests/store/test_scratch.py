"""A crash's leftovers in ``blobs/tmp/`` are swept at node start; live and foreign files stay."""

from __future__ import annotations

import os
from pathlib import Path

from bcfl_cli.store.blobs import BlobStore
from bcfl_cli.store.scratch import SCRATCH_STALE_S, sweep_scratch

NOW = 2_000_000_000.0


def _make(path: Path, data: bytes, age_s: float) -> Path:
    path.write_bytes(data)
    os.utime(path, (NOW - age_s, NOW - age_s))
    return path


def test_stale_scratch_goes_and_everything_else_stays(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    digest = store.put(b"a blob the store names")
    tmp = store.root / "tmp"
    old = SCRATCH_STALE_S + 10
    gone = [
        _make(tmp / "aggregate-abc", b"x" * 100, old),
        _make(tmp / "update-abc", b"x" * 10, old),
        _make(tmp / "in-abc", b"x", old),
        _make(tmp / ("fetch-" + "ab" * 32 + ".part"), b"x" * 5, old),
    ]
    models = tmp / "models-xyz"
    models.mkdir()
    _make(models / "cd", b"m" * 7, old)
    os.utime(models, (NOW - old, NOW - old))
    kept = [
        _make(tmp / "aggregate-live", b"x", 5),  # being written now
        _make(tmp / ("up-tag-" + "ab" * 32 + "-9.part"), b"x", old),  # blob_routes' own rule
        _make(tmp / "operator-notes.txt", b"x", old),  # not a name we write
    ]
    live_models = tmp / "models-live"
    live_models.mkdir()
    _make(live_models / "ef", b"m", 5)
    os.utime(live_models, (NOW - old, NOW - old))  # the folder is old, its newest file is not

    swept = sweep_scratch(store.root, now=NOW)

    assert swept.entries == 5 and swept.bytes == 100 + 10 + 1 + 5 + 7
    assert not any(p.exists() for p in gone) and not models.exists()
    assert all(p.exists() for p in kept) and live_models.exists()
    assert store.verify(digest)
    assert sweep_scratch(store.root, now=NOW).entries == 0  # idempotent


def test_a_store_without_tmp_is_fine(tmp_path: Path) -> None:
    assert sweep_scratch(tmp_path / "nothing").entries == 0


def test_a_symlink_is_never_followed(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    outside = tmp_path / "precious"
    outside.mkdir()
    _make(outside / "keep", b"k", SCRATCH_STALE_S * 2)
    link = store.root / "tmp" / "models-link"
    link.symlink_to(outside)
    os.utime(link, (NOW - SCRATCH_STALE_S * 2,) * 2, follow_symlinks=False)
    sweep_scratch(store.root, now=NOW)
    assert (outside / "keep").exists()
