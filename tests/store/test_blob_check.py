"""``BlobStore.check``: what has/verify/size find, in one open (verify-chain's blob step)."""

from __future__ import annotations

import os

import pytest

from bcfl_cli.errors import BlobError
from bcfl_cli.store.blobs import BlobStore


def test_check_agrees_with_has_verify_size(tmp_path):
    blobs = BlobStore(tmp_path)
    data = b"model bytes" * 1000
    digest = blobs.put(data)
    assert blobs.check(digest) == ("ok", len(data)) and blobs.verify(digest)
    empty = blobs.put(b"")
    assert blobs.check(empty) == ("ok", 0)
    path = blobs.path_for(digest)
    path.write_bytes(data[:-1])
    assert blobs.check(digest) == ("corrupt", len(data) - 1) and not blobs.verify(digest)
    path.unlink()
    assert blobs.check(digest) == ("missing", 0) and not blobs.has(digest)
    path.mkdir()  # a directory under the name is not a blob
    assert blobs.check(digest) == ("missing", 0) and not blobs.has(digest)
    path.rmdir()
    os.mkfifo(path)  # nor is a FIFO, and checking it must not block
    assert blobs.check(digest) == ("missing", 0) and not blobs.has(digest)
    path.unlink()
    never = "ab" * 32  # its directory does not even exist
    assert blobs.check(never) == ("missing", 0)


def test_check_streams_large_blobs(tmp_path, monkeypatch):
    import bcfl_cli.store.blobs as module

    monkeypatch.setattr(module, "CHUNK", 7)
    blobs = BlobStore(tmp_path)
    data = bytes(range(256)) * 3
    assert blobs.check(blobs.put(data)) == ("ok", len(data))


@pytest.mark.parametrize("name", ["", "../etc/passwd", "AB" * 32, "ab" * 31])
def test_check_refuses_names_that_are_not_hashes(tmp_path, name):
    with pytest.raises(BlobError):
        BlobStore(tmp_path).check(name)


@pytest.mark.parametrize("chunk", [7, 1 << 20])
def test_check_without_the_record_hashes_and_notes_nothing(tmp_path, monkeypatch, chunk):
    """verify-chain's pass (``remember=False``): the same verdicts as a store that never saw
    the blobs, by SHA-256 alone; it neither trusts nor grows the content record."""
    import bcfl_cli.store.blobs as module

    monkeypatch.setattr(module, "CHUNK", chunk)
    writer = BlobStore(tmp_path)
    data = bytes(range(256)) * 3
    digest, empty = writer.put(data), writer.put(b"")
    reader = BlobStore(tmp_path)
    assert reader.check(digest, remember=False) == ("ok", len(data))
    assert reader.check(empty, remember=False) == ("ok", 0)
    assert len(reader.record) == 0
    # a record that would vouch for anything is not asked
    monkeypatch.setattr(writer.record, "unchanged", lambda digest, fd: True)
    path = writer.path_for(digest)
    path.write_bytes(data[:-1])
    assert writer.check(digest) == ("ok", len(data) - 1)  # what the record says...
    assert writer.check(digest, remember=False) == ("corrupt", len(data) - 1)  # ...and SHA-256
    path.unlink()
    assert writer.check(digest, remember=False) == ("missing", 0)
    path.mkdir()
    assert writer.check(digest, remember=False) == ("missing", 0)
    path.rmdir()
    os.mkfifo(path)
    assert writer.check(digest, remember=False) == ("missing", 0)
