"""The contract on a file read piece by piece: the verdicts of the bytes, the norm of the whole
state to the bit, and a local file that changes or rots is the node's error, not a verdict."""

from __future__ import annotations

import hashlib
import json
import math
import struct
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bcfl_cli.errors import BlobError, ContractError
from bcfl_cli.fl import contract
from bcfl_cli.fl.contract import RoundContext, UpdateClaim, check_update, finite_l2_norm
from bcfl_cli.fl.numerics import l2_norm
from bcfl_cli.fl.tensorfile import TensorFile
from bcfl_cli.fl.tensors import check_safetensors_layout, decode_tensors, encode_tensors
from bcfl_cli.protocol.spec import ContractRules

ALICE = "did:key:z6MkAlice"
CTX = RoundContext(trainers=frozenset({ALICE}), round=1, round_open=True, base_model="b" * 64)
LIMIT = 1 << 22

_EXTREMES_32 = [0.0, -0.0, 1e-45, -1e-45, 1.17549435e-38, 3.4028235e38, -3.4028235e38, 1.0, 0.1]
#: float64 values up to 2^511 or so, whose squares stay finite; two squares of 1.3e154 add up
#: past the largest double (an OverflowError, then as now). Past that no square is finite, and
#: the old sum's answer (inf or OverflowError) depended on where the first inf fell among
#: ``exact_sum``'s chunks: unreachable, since every update layout is float32 (or 16-bit).
_HUGE_64 = 1.3e154
_EXTREMES_64 = [5e-324, 1e-300, 1e100, 1e154, _HUGE_64, -_HUGE_64]


def _values(dtype: torch.dtype, finite: bool) -> st.SearchStrategy[float]:
    width = 64 if dtype == torch.float64 else 32
    extremes = _EXTREMES_64 + _EXTREMES_32 if width == 64 else _EXTREMES_32
    bound = _HUGE_64 if width == 64 else None
    plain = st.floats(
        min_value=bound and -bound,
        max_value=bound,
        width=width,
        allow_nan=False,
        allow_infinity=False,
    )
    if not finite:
        plain = st.one_of(plain, st.sampled_from([math.nan, math.inf, -math.inf]))
    return st.one_of(plain, st.sampled_from(extremes))


_HALVES = [torch.bfloat16, torch.float16]


@st.composite
def _states(draw: st.DrawFn, halves: bool = False) -> dict[str, torch.Tensor]:
    finite = draw(st.booleans())
    state: dict[str, torch.Tensor] = {}
    for index in range(draw(st.integers(1, 4))):
        kinds = [torch.float32, torch.float32, torch.float64, *(_HALVES if halves else [])]
        dtype = draw(st.sampled_from(kinds))
        shape = draw(st.lists(st.integers(0, 4), min_size=1, max_size=2))
        count = math.prod(shape)
        values = draw(st.lists(_values(dtype, finite), min_size=count, max_size=count))
        name = draw(st.sampled_from(["w", "b", "layer.0", "z"])) + str(index)
        wide = torch.float64 if dtype == torch.float64 else torch.float32
        state[name] = torch.tensor(values, dtype=wide).to(dtype).reshape(shape)
    return state


def _whole(state: dict[str, torch.Tensor]) -> tuple[str | None, str]:
    """What the contract computed before it streamed: finite check first, then ``l2_norm``."""
    for name in sorted(state):
        if not bool(torch.isfinite(state[name]).all()):
            return name, "nan"
    try:
        with np.errstate(over="ignore"):
            return None, l2_norm(state).hex()
    except OverflowError:
        return None, "OverflowError"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_states(halves=True), st.sampled_from([1, 2, 3, 7, 1 << 16]))
def test_the_streamed_norm_is_the_whole_norm_to_the_bit(
    state: dict[str, torch.Tensor], piece: int
) -> None:
    file = TensorFile.of_bytes(encode_tensors(state), max_bytes=LIMIT)
    try:
        name, norm = finite_l2_norm(file, piece_elements=piece)
        streamed = (name, "nan" if name is not None else norm.hex())
    except OverflowError:
        streamed = (None, "OverflowError")
    assert streamed == _whole(state)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.lists(_values(torch.float32, True), min_size=0, max_size=40), min_size=1, max_size=3
    ),
    st.sampled_from([1, 3, 1 << 20]),
)
def test_a_float32_update_norm_is_fsum_of_its_squares(
    tensors: list[list[float]], piece: int
) -> None:
    """The all-float32 path (integer mantissas) against the definition, not against l2_norm;
    taken here for any size (it starts above ``SMALL_SUM`` values, where ``fsum`` costs more)."""
    state = {f"t{i}": torch.tensor(v, dtype=torch.float32) for i, v in enumerate(tensors)}
    file = TensorFile.of_bytes(encode_tensors(state), max_bytes=LIMIT)
    with mock.patch.object(contract, "SMALL_SUM", -1):
        name, norm = finite_l2_norm(file, piece_elements=piece)
    values = [float(x) for t in state.values() for x in t.tolist()]
    assert name is None
    assert norm.hex() == math.sqrt(math.fsum(x * x for x in values)).hex()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_states(), st.floats(1e-3, 1e3))
def test_a_file_gets_the_verdict_of_its_bytes(
    tmp_path_factory: pytest.TempPathFactory, state: dict[str, torch.Tensor], bound: float
) -> None:
    rules = ContractRules(max_update_norm=bound, max_blob_bytes=LIMIT)
    data = encode_tensors(state)
    path = tmp_path_factory.mktemp("blob") / "update"
    path.write_bytes(data)
    claim = UpdateClaim(ALICE, 1, "b" * 64, hashlib.sha256(data).hexdigest(), len(data), 50)
    layout = contract.layout_of(state)
    from_bytes = check_update(rules, layout, claim, CTX, data)
    assert check_update(rules, layout, claim, CTX, path) == from_bytes
    assert check_update(rules, layout, claim, CTX, path, named_by_hash=True) == from_bytes


def _update(tmp_path: Path, scale: float = 0.01) -> tuple[Path, bytes, UpdateClaim, dict]:
    state = {"w": torch.full((50, 20), scale), "b": torch.full((20,), scale)}
    data = encode_tensors(state)
    path = tmp_path / hashlib.sha256(data).hexdigest()
    path.write_bytes(data)
    claim = UpdateClaim(ALICE, 1, "b" * 64, path.name, len(data), 50)
    return path, data, claim, contract.layout_of(state)


RULES = ContractRules(max_update_norm=10.0, max_blob_bytes=LIMIT)


def test_a_missing_file_is_a_missing_blob(tmp_path: Path) -> None:
    _, _, claim, layout = _update(tmp_path)
    verdict = check_update(RULES, layout, claim, CTX, tmp_path / "gone")
    assert (verdict.accept, verdict.reason) == (False, "blob_missing")


def test_a_file_that_does_not_hash_to_its_name_is_a_corrupt_copy(tmp_path: Path) -> None:
    path, data, claim, layout = _update(tmp_path)
    path.write_bytes(data[:-4] + b"\0\0\0\0")
    verdict = check_update(RULES, layout, claim, CTX, path)  # a file someone handed us
    assert (verdict.accept, verdict.reason) == (False, "blob_hash_mismatch")
    with pytest.raises(BlobError, match="corrupt"):  # the store's own copy: our fault
        check_update(RULES, layout, claim, CTX, path, named_by_hash=True)


@pytest.mark.parametrize("step", ["sha256_of", "check_layout"])
def test_a_file_changed_while_checked_is_the_nodes_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    path, data, claim, layout = _update(tmp_path)
    real = getattr(contract, step)

    def truncating(*args: object) -> object:
        with path.open("r+b") as f:
            f.truncate(len(data) - 40)
        return real(*args)

    monkeypatch.setattr(contract, step, truncating)
    with pytest.raises(BlobError, match="changed on disk"):
        check_update(RULES, layout, claim, CTX, path, named_by_hash=True)


def test_the_norm_bound_is_read_from_the_file(tmp_path: Path) -> None:
    path, _, claim, layout = _update(tmp_path, scale=1.0)  # norm sqrt(1020) > 10
    verdict = check_update(RULES, layout, claim, CTX, path)
    assert (verdict.accept, verdict.reason) == (False, "norm_exceeded")
    assert verdict.detail == f"L2 norm {math.sqrt(1020.0)!r} exceeds 10.0"


# --- the verdicts of the contract before it streamed ---------------------------------------
def _verdict_before_streaming(
    rules: ContractRules, layout: contract.Layout, claim: UpdateClaim, blob: bytes
) -> tuple[bool, str]:
    """``check_blob`` as it was: the bytes, then the whole state decoded (issue 19 removed it)."""
    try:
        if len(blob) > rules.max_blob_bytes:
            return False, "blob_too_large"
        if hashlib.sha256(blob).hexdigest() != claim.blob or len(blob) != claim.blob_size:
            return False, "blob_hash_mismatch"
        found = check_safetensors_layout(blob, max_bytes=rules.max_blob_bytes)
        verdict = contract.check_layout(layout, found)
        if verdict is not None:
            return verdict.accept, verdict.reason
        delta = decode_tensors(blob, max_bytes=rules.max_blob_bytes)
        if any(not bool(torch.isfinite(delta[k]).all()) for k in sorted(delta)):
            return False, "non_finite"
        with np.errstate(over="ignore"):
            norm = l2_norm(delta)
        return (True, "ok") if norm <= rules.max_update_norm else (False, "norm_exceeded")
    except ContractError as exc:
        return False, exc.reason
    except OverflowError:
        return False, "malformed_blob"


@st.composite
def _blobs(draw: st.DrawFn) -> tuple[bytes, contract.Layout]:
    """A state's blob, its layout, and now and then a header that lies about it."""
    state = draw(_states())
    data = encode_tensors(state)
    layout = contract.layout_of(state)
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    name = draw(st.sampled_from(sorted(state)))
    lie = draw(st.sampled_from(["none", "none", "gap", "tail", "shape", "offset", "cut"]))
    body = data[8 + length :]
    if lie == "gap":
        start, end = header[name]["data_offsets"]
        header[name]["data_offsets"] = [start + 4, end + 4]
        body += b"\0" * 4
    elif lie == "tail":
        body += b"\0" * draw(st.integers(1, 9))
    elif lie == "shape":
        header[name]["shape"] = [*header[name]["shape"], 1]
    elif lie == "offset":
        header[name]["data_offsets"][1] += draw(st.integers(-4, 4))
    elif lie == "cut":
        body = body[: draw(st.integers(0, len(body)))]
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + body, layout


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_blobs(), st.floats(1e-3, 1e3))
def test_the_verdicts_are_those_of_the_whole_state(
    blob_and_layout: tuple[bytes, contract.Layout], bound: float
) -> None:
    blob, layout = blob_and_layout
    rules = ContractRules(max_update_norm=bound, max_blob_bytes=LIMIT)
    claim = UpdateClaim(ALICE, 1, "b" * 64, hashlib.sha256(blob).hexdigest(), len(blob), 50)
    verdict = check_update(rules, layout, claim, CTX, blob)
    assert (verdict.accept, verdict.reason) == _verdict_before_streaming(rules, layout, claim, blob)
