"""The store's record of the blobs it hashed: a cheap re-check that never passes a changed file.

The aggregate used to SHA-256 every input again before its pass (0.84 CPU-s a node at 110M
parameters); a blob this process stored under a SHA-256 it computed is now re-checked from
the record (store/content_record.py): same file (device, inode, size, status change time)
and same XXH3-128 of its content, or SHA-256 as before.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from bcfl_cli.errors import BlobError
from bcfl_cli.fl import stored_aggregate
from bcfl_cli.fl.aggregation import aggregate
from bcfl_cli.fl.stored_aggregate import aggregate_file, keep_as_blob, open_blob
from bcfl_cli.fl.tensors import ByteSource, encode_tensors
from bcfl_cli.protocol.spec import AggregationSpec
from bcfl_cli.store.blobs import BlobStore
from bcfl_cli.store.content_record import ContentRecord, content_sum
from tests.fl.test_stored_aggregate import _round


def _no_sha256(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Count the aggregate's SHA-256 passes over an input (each still hashes)."""
    calls: list[str] = []
    real_sha, real_both = stored_aggregate.sha256_of, stored_aggregate.sha256_and_sum

    def sha(source: ByteSource) -> str:
        calls.append("sha256_of")
        return real_sha(source)

    def both(source: ByteSource) -> tuple[str, str]:
        calls.append("sha256_and_sum")
        return real_both(source)

    monkeypatch.setattr(stored_aggregate, "sha256_of", sha)
    monkeypatch.setattr(stored_aggregate, "sha256_and_sum", both)
    return calls


def test_a_blob_stored_here_is_rechecked_without_sha256_and_the_aggregate_is_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = BlobStore(tmp_path / "blobs")
    inputs, base, updates, initial = _round(store)  # put: hashed here, noted
    spec = AggregationSpec(rule="cosine_trajectory")
    expected = aggregate(spec, base, updates, initial_state=initial)
    calls = _no_sha256(monkeypatch)
    with aggregate_file(store, spec, inputs, max_bytes=1 << 24) as (result, written):
        keep_as_blob(store, written, result.model_hash, result.content_sum)
    assert calls == []
    assert result.model_hash == expected.model_hash
    assert result.content_sum == xxhash.xxh3_128(expected.model_bytes).hexdigest()
    # the kept aggregate is noted too: the next round reads its base without SHA-256
    with open_blob(store, result.model_hash, max_bytes=1 << 24):
        pass
    assert calls == []


def test_a_blob_this_process_did_not_hash_is_hashed_once_then_noted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    BlobStore(tmp_path / "blobs").put(b"x")  # make the folder
    writer = BlobStore(tmp_path / "blobs")
    inputs, *_ = _round(writer)
    reader = BlobStore(tmp_path / "blobs")  # another process: no record
    calls = _no_sha256(monkeypatch)
    with open_blob(reader, inputs.base, max_bytes=1 << 24):
        pass
    assert len(calls) == 1
    with open_blob(reader, inputs.base, max_bytes=1 << 24):
        pass
    assert len(calls) == 1


def test_a_file_written_in_place_after_it_was_noted_is_hashed_again_and_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = BlobStore(tmp_path / "blobs")
    inputs, *_ = _round(store)
    path = store.path_for(inputs.updates[1][1])
    with open(path, "r+b") as f:  # same inode and size; the change time moves
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 1]))
    calls = _no_sha256(monkeypatch)
    with (
        pytest.raises(BlobError, match="corrupt"),
        aggregate_file(store, AggregationSpec(), inputs, max_bytes=1 << 24),
    ):
        pass
    assert calls  # the record did not answer: the file is not the one noted


def test_bytes_that_differ_from_those_hashed_under_the_same_identity_are_corrupt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A change no status change time shows (a bad disk; a write between the hash and the
    rename): the file's identity is the one noted, its content sum is not."""
    store = BlobStore(tmp_path / "blobs")
    inputs, *_ = _round(store)
    digest = inputs.updates[0][1]
    fd = os.open(store.path_for(digest), os.O_RDONLY)
    try:
        store.note_checked(digest, fd, xxhash.xxh3_128(b"other bytes").hexdigest())
        assert store.unchanged(digest, fd) is False
    finally:
        os.close(fd)
    calls = _no_sha256(monkeypatch)
    with (
        pytest.raises(BlobError, match="corrupt"),
        aggregate_file(store, AggregationSpec(), inputs, max_bytes=1 << 24),
    ):
        pass
    assert calls == []  # refused from the record alone


def test_an_upload_adopted_with_its_running_sums_is_noted_and_a_bare_known_digest_is_not(
    tmp_path: Path,
) -> None:
    store = BlobStore(tmp_path / "blobs")
    data = encode_tensors({"w": torch.arange(1000, dtype=torch.float32)})
    digest = hashlib.sha256(data).hexdigest()
    for summed, noted in ((xxhash.xxh3_128(data).hexdigest(), True), (None, False)):
        part = store.root / "tmp" / "up.part"
        part.write_bytes(data)
        store.record.forget(digest)
        store.remove(digest)
        store.adopt(
            part, expected=digest, max_bytes=len(data), known_digest=digest, known_sum=summed
        )
        fd = os.open(store.path_for(digest), os.O_RDONLY)
        try:
            assert store.unchanged(digest, fd) is (True if noted else None)
        finally:
            os.close(fd)


def test_a_removed_blob_is_forgotten_and_the_record_is_bounded(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    digest = store.put(b"abc")
    assert len(store.record) == 1
    store.remove(digest)
    assert len(store.record) == 0
    record = ContentRecord(capacity=2)
    path = tmp_path / "f"
    path.write_bytes(b"0123")
    fd = os.open(path, os.O_RDONLY)
    try:
        for i in range(5):
            record.note(f"{i:064x}", fd, content_sum(fd, 4))
        assert len(record) == 2
        assert record.unchanged(f"{0:064x}", fd) is None
        assert record.unchanged(f"{4:064x}", fd) is True
    finally:
        os.close(fd)


def test_check_answers_from_the_record_and_notes_what_it_hashed(tmp_path: Path) -> None:
    writer = BlobStore(tmp_path / "blobs")
    digest = writer.put(b"the round's base model")
    reader = BlobStore(tmp_path / "blobs")  # another process: hashes it, then notes it
    assert reader.check(digest) == ("ok", 22)
    assert len(reader.record) == 1
    assert reader.check(digest) == ("ok", 22)
    fd = os.open(reader.path_for(digest), os.O_RDONLY)
    try:  # the same file, other bytes than those hashed: corrupt from the record alone
        reader.note_checked(digest, fd, xxhash.xxh3_128(b"other").hexdigest())
    finally:
        os.close(fd)
    assert reader.check(digest) == ("corrupt", 22)
    with open(reader.path_for(digest), "r+b") as f:  # written in place: hashed again
        f.write(b"T")
    assert BlobStore(tmp_path / "blobs").check(digest)[0] == "corrupt"
    assert reader.check(digest)[0] == "corrupt"


@settings(max_examples=60, deadline=None)
@given(data=st.binary(min_size=1, max_size=3000), flip=st.integers(min_value=0))
def test_any_changed_byte_under_the_noted_identity_is_found(
    tmp_path_factory: pytest.TempPathFactory, data: bytes, flip: int
) -> None:
    """Whatever the bytes and whichever one changes, the record never answers True for them."""
    path = tmp_path_factory.mktemp("record") / "blob"
    changed = bytearray(data)
    changed[flip % len(data)] ^= 1 + flip % 255
    path.write_bytes(bytes(changed))
    record = ContentRecord()
    fd = os.open(path, os.O_RDONLY)
    try:
        record.note("b" * 64, fd, xxhash.xxh3_128(data).hexdigest())  # the bytes hashed
        assert record.unchanged("b" * 64, fd) is False
        record.note("b" * 64, fd, xxhash.xxh3_128(bytes(changed)).hexdigest())
        assert record.unchanged("b" * 64, fd) is True
    finally:
        os.close(fd)
