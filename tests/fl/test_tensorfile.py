"""A safetensors file read tensor by tensor: the same layout verdicts as the bytes, the same
tensors as the loader, only the header read up front, and a file changed under it refused."""

from __future__ import annotations

import gc
import hashlib
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load as st_load

from bcfl_cli.errors import ContractError
from bcfl_cli.fl import tensorfile
from bcfl_cli.fl.tensorfile import FileSource, LazyTensors, TensorFile, sha256_of
from bcfl_cli.fl.tensors import (
    MAX_HEADER_BYTES,
    check_safetensors_layout,
    decode_tensors,
    encode_tensors,
)

LIMIT = 1 << 24
STATE = {
    "b.bias": torch.arange(5, dtype=torch.float32),
    "a.weight": torch.randn(3, 4, generator=torch.Generator().manual_seed(1)),
    "c.half": torch.tensor([1.5, -2.0], dtype=torch.float16),
    "d.bf16": torch.tensor([0.25, 3.0, -1.0], dtype=torch.bfloat16),
    "e.count": torch.tensor([7, -9], dtype=torch.int64),
    "f.mask": torch.tensor([True, False, True]),
    "g.empty": torch.zeros(0, 3),
}


def _file(tmp_path: Path, data: bytes, name: str = "blob") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_a_file_reads_as_the_loader_reads_its_bytes(tmp_path: Path) -> None:
    data = encode_tensors(STATE)
    whole = decode_tensors(data, max_bytes=LIMIT)
    with TensorFile.open(_file(tmp_path, data), max_bytes=LIMIT) as file:
        assert file.layout == check_safetensors_layout(data, max_bytes=LIMIT)
        lazy = file.tensors()
        assert isinstance(lazy, LazyTensors)
        assert list(lazy) == sorted(STATE) and len(lazy) == len(STATE)
        assert "a.weight" in lazy and "nope" not in lazy
        for name in STATE:
            got = lazy[name]
            assert got.dtype == whole[name].dtype and torch.equal(got, whole[name]), name
            pieces = list(file.pieces(name, elements=2))
            assert all(p.numel() <= 2 for p in pieces)
            flat = torch.cat(pieces) if pieces else torch.empty(0, dtype=got.dtype)
            assert torch.equal(flat, whole[name].reshape(-1)), name
            wide = list(file.float64_pieces(name, elements=2))
            assert all(p.dtype == np.float64 and p.size <= 2 for p in wide)
            joined = np.concatenate(wide) if wide else np.zeros(0)
            assert np.array_equal(joined, whole[name].to(torch.float64).reshape(-1).numpy())
        with pytest.raises(KeyError):
            lazy["nope"]
        assert sha256_of(file.source) == hashlib.sha256(data).hexdigest()


def test_bytes_and_files_share_one_validator(tmp_path: Path) -> None:
    data = encode_tensors(STATE)
    from_bytes = TensorFile.of_bytes(data, max_bytes=LIMIT)
    with TensorFile.open(_file(tmp_path, data), max_bytes=LIMIT) as from_file:
        assert from_bytes.header == from_file.header


def test_opening_reads_the_header_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    big = {"w": torch.ones(1 << 20)}  # 4 MiB of data behind a header of ~80 bytes
    data = encode_tensors(big)
    read: list[int] = []
    original = FileSource.read_into

    def counting(self: FileSource, offset: int, buffer: memoryview) -> None:
        read.append(buffer.nbytes)
        original(self, offset, buffer)

    monkeypatch.setattr(FileSource, "read_into", counting)
    with TensorFile.open(_file(tmp_path, data), max_bytes=LIMIT) as file:
        assert sum(read) < 200, read
        assert file.layout == {"w": ("F32", [1 << 20])}
        assert sum(p.numel() for p in file.pieces("w")) == 1 << 20
        assert max(read) <= tensorfile.PIECE_ELEMENTS * 4


def test_an_impossible_header_length_is_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "huge-header"
    with path.open("wb") as f:
        f.write(struct.pack("<Q", MAX_HEADER_BYTES + 1))
        f.truncate(MAX_HEADER_BYTES + 100)
    with pytest.raises(ContractError, match="header length"):
        TensorFile.open(path, max_bytes=LIMIT)
    with pytest.raises(ContractError, match="blob_too_large"):
        TensorFile.open(path, max_bytes=1000)


def test_a_file_truncated_under_it_is_a_contract_error(tmp_path: Path) -> None:
    data = encode_tensors({"a": torch.ones(1000), "b": torch.ones(1000)})
    path = _file(tmp_path, data)
    with TensorFile.open(path, max_bytes=LIMIT) as file:
        assert isinstance(file.source, FileSource) and not file.source.changed()
        with path.open("r+b") as f:
            f.truncate(len(data) - 100)
        assert file.source.changed()
        torch.testing.assert_close(file.tensors()["a"], torch.ones(1000))
        with pytest.raises(ContractError, match="changed while it was read"):
            file.tensors()["b"]
        with pytest.raises(ContractError, match="changed while it was read"):
            sha256_of(file.source)


def test_a_file_grown_under_it_is_noticed(tmp_path: Path) -> None:
    data = encode_tensors({"a": torch.ones(10)})
    path = _file(tmp_path, data)
    with TensorFile.open(path, max_bytes=LIMIT) as file:
        with path.open("ab") as f:
            f.write(b"\0" * 8)
        assert isinstance(file.source, FileSource) and file.source.changed()


# --- the same verdict as the safetensors loader, on headers that lie ----------------------
def _blob(entries: list[tuple[str, str, list[int], list[int]]], body: int, lead: bytes) -> bytes:
    header = {name: {"dtype": d, "shape": s, "data_offsets": o} for name, d, s, o in entries}
    text = lead + json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + b"\0" * body


@st.composite
def _lying_blobs(draw: st.DrawFn) -> bytes:
    count = draw(st.integers(1, 4))
    entries = []
    position = 0
    for index in range(count):
        dtype = draw(st.sampled_from(["F32", "F16", "I64", "U8"]))
        shape = draw(st.lists(st.integers(0, 3), max_size=2))
        size = {"F32": 4, "F16": 2, "I64": 8, "U8": 1}[dtype]
        for d in shape:
            size *= d
        start = position + draw(st.sampled_from([0, 0, 0, 1, -1, 4]))
        start = max(start, 0)
        end = start + size + draw(st.sampled_from([0, 0, 0, 1]))
        name = draw(st.sampled_from([f"t{index}", f"t{index}\ud800", f"t{index}é"]))
        entries.append((name, dtype, shape, [start, end]))
        position = max(position, end)
    body = position + draw(st.sampled_from([0, 0, 0, 1, -1]))
    lead = draw(st.sampled_from([b"", b" "]))
    return _blob(entries, max(body, 0), lead)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_lying_blobs())
def test_a_file_opens_exactly_when_the_loader_loads(data: bytes) -> None:
    try:
        expected = dict(st_load(data))
    except Exception:
        expected = None
    try:
        file = TensorFile.of_bytes(data, max_bytes=LIMIT)
    except ContractError as exc:
        assert exc.reason == "malformed_blob"
        assert expected is None, exc
        return
    assert expected is not None
    lazy = file.tensors()
    assert set(lazy) == set(expected)
    for name, value in expected.items():
        assert torch.equal(lazy[name], value)


def test_a_file_left_open_gives_its_descriptor_back(tmp_path: Path) -> None:
    path = _file(tmp_path, encode_tensors({"a": torch.ones(4)}))
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(50):
        TensorFile.open(path, max_bytes=LIMIT).tensors()["a"]
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) <= before + 1


def test_a_fifo_in_place_of_a_file_is_refused_without_waiting(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ContractError, match="not a regular file"):
        TensorFile.open(fifo, max_bytes=LIMIT)
    with pytest.raises(ContractError, match="not a regular file"):
        TensorFile.open(tmp_path, max_bytes=LIMIT)
