"""The streaming safetensors writer: the same bytes as ``encode_tensors``, piece by piece."""

from __future__ import annotations

import hashlib
import io

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bcfl_cli.fl.tensors import encode_tensors
from bcfl_cli.fl.tensorwriter import DTYPE_ORDER, SafetensorsWriter, TensorSpec, layout_of

NAMES = st.text(min_size=0, max_size=6).filter(lambda s: s != "__metadata__")
SHAPES = st.lists(st.integers(0, 4), min_size=0, max_size=3).map(tuple)


def _tensor(dtype: torch.dtype, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    raw = torch.randint(
        0,
        256,
        shape + (torch.empty((), dtype=dtype).element_size(),),
        generator=g,
        dtype=torch.uint8,
    )
    return raw.view(dtype).reshape(shape) if shape else raw.view(dtype).reshape(())


@st.composite
def states(draw: st.DrawFn) -> dict[str, torch.Tensor]:
    names = draw(st.lists(NAMES, min_size=1, max_size=6, unique=True))
    return {
        name: _tensor(
            draw(st.sampled_from(list(DTYPE_ORDER))), draw(SHAPES), draw(st.integers(0, 99))
        )
        for name in names
    }


def _write(state: dict[str, torch.Tensor], piece: int) -> tuple[bytes, str, int]:
    out = io.BytesIO()
    writer = SafetensorsWriter(out, layout_of(state))
    for name in writer.order:
        flat = state[name].reshape(-1)
        for start in range(0, flat.numel(), piece):
            writer.write(name, flat[start : start + piece])
    digest, size = writer.finish()
    return out.getvalue(), digest, size


@settings(max_examples=200, deadline=None)
@given(state=states(), piece=st.integers(1, 7))
def test_written_bytes_are_those_of_encode_tensors(
    state: dict[str, torch.Tensor], piece: int
) -> None:
    data, digest, size = _write(state, piece)
    assert data == encode_tensors(state)
    assert (digest, size) == (hashlib.sha256(data).hexdigest(), len(data))


def test_names_with_escapes_and_non_ascii_match() -> None:
    state = {'\u00e9\n\x01"\\': torch.ones(2), "a": torch.zeros(3, dtype=torch.int64)}
    assert _write(state, 1)[0] == encode_tensors(state)


def test_misuse_is_refused() -> None:
    layout = {"a": TensorSpec(torch.float32, (2,)), "b": TensorSpec(torch.float32, (1,))}
    writer = SafetensorsWriter(io.BytesIO(), layout)
    with pytest.raises(ValueError, match="out of order"):
        writer.write("b", torch.ones(1))
    with pytest.raises(ValueError, match="declared"):
        writer.write("a", torch.ones(1, dtype=torch.float64))
    with pytest.raises(ValueError, match="more bytes"):
        writer.write("a", torch.ones(3))
    writer.write("a", torch.ones(2))
    with pytest.raises(ValueError, match="not written in full"):
        writer.finish()
