"""Compact updates (issue 19): ``contract.update_dtype`` in the genesis, the trainer's rounding
and streaming writer, the contract's expected dtype, and the aggregate's exactness."""

from __future__ import annotations

import hashlib
import io
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bcfl_cli.consortium import load_config
from bcfl_cli.errors import EncodingError, UsageError
from bcfl_cli.fl import contract, numerics
from bcfl_cli.fl.aggregation import UpdateInput, aggregate, aggregate_to
from bcfl_cli.fl.contract import RoundContext, UpdateClaim, check_update
from bcfl_cli.fl.models import initial_state
from bcfl_cli.fl.tensorfile import TensorFile
from bcfl_cli.fl.tensors import decode_tensors, encode_tensors
from bcfl_cli.fl.update_file import (
    BaseWeights,
    DeltaView,
    to_update_dtype,
    write_update,
)
from bcfl_cli.protocol.encoding import hash_object
from bcfl_cli.protocol.spec import AggregationSpec, ContractRules, ModelSpec
from tests.consortium.helpers import example_toml, write_config
from tests.fl.test_aggregation import SPECS

SPEC = ModelSpec(architecture="mlp", input_shape=[4], num_classes=3, hidden=[5])
BASE = "b" * 64
ALICE = "did:key:z6MkAlice"
CTX = RoundContext(trainers=frozenset({ALICE}), round=3, round_open=True, base_model=BASE)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _rules(dtype: str) -> ContractRules:
    return ContractRules(
        max_update_norm=10.0, min_samples=5, max_blob_bytes=4096, update_dtype=dtype
    )  # type: ignore[arg-type]


def _claim(blob: bytes) -> UpdateClaim:
    digest = hashlib.sha256(blob).hexdigest()
    return UpdateClaim(ALICE, 3, BASE, digest, len(blob), 50)


def _delta(value: float, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: torch.full_like(v, value).to(dtype) for k, v in initial_state(SPEC).items()}


# --- the genesis field ---------------------------------------------------------------------
def test_a_genesis_without_the_field_keeps_its_bytes_and_hash(tmp_path):
    """The example file's document, pinned before update_dtype existed, is unchanged: the
    default (float32) is never written, and a document that spells it out is not canonical."""
    from bcfl_cli.consortium.config import genesis_config_from_document

    text = (
        example_toml(("alice", "bob", "carol", "dave"))
        .replace("round_deadline_s = 600 ", "deadline_blocks = 20    ", 1)
        .replace("max_blob_bytes = 1073741824 # 1 GiB", "max_blob_bytes = 67108864   # 64 MiB", 1)
    )
    document = load_config(write_config(tmp_path, text)).to_document("cd" * 32)
    assert "update_dtype" not in document["contract"]
    assert hash_object({**document, "initial_model": "ab" * 32}) == (
        "37b8c357e2d42f674a700b1ff0c886de94b556c7aa388ea1f812912cdffd23e0"
    )
    assert genesis_config_from_document(document)[0].contract.update_dtype == "float32"
    spelled = {**document, "contract": {**document["contract"], "update_dtype": "float32"}}
    with pytest.raises(EncodingError, match="canonical"):
        genesis_config_from_document(spelled)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_a_genesis_with_the_field_round_trips(tmp_path, dtype):
    from bcfl_cli.chain.config import parse_document
    from bcfl_cli.consortium.config import genesis_config_from_document

    text = example_toml(("alice", "bob", "carol", "dave")).replace(
        "[contract]\n", f'[contract]\nupdate_dtype = "{dtype}"\n', 1
    )
    document = load_config(write_config(tmp_path, text)).to_document("cd" * 32)
    assert document["contract"]["update_dtype"] == dtype
    assert parse_document(document).contract.update_dtype == dtype
    assert genesis_config_from_document(document)[0].contract.update_dtype == dtype


def test_an_unknown_update_dtype_is_refused():
    with pytest.raises(ValueError, match="update_dtype"):
        ContractRules(update_dtype="int8")  # type: ignore[arg-type]


# --- the trainer's writer ------------------------------------------------------------------
_names = st.text(alphabet="abcdefghij._0123456789", min_size=1, max_size=12)
_shapes = st.lists(st.integers(0, 5), min_size=0, max_size=3).map(tuple)


@settings(max_examples=60, deadline=None)
@given(
    shapes=st.dictionaries(_names, _shapes, max_size=6),
    dtype=st.sampled_from(sorted(DTYPES)),
    seed=st.integers(0, 2**31),
)
def test_the_streaming_writer_gives_the_bytes_of_encode_tensors(shapes, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    delta = {k: torch.randn(s, generator=g) * 100 for k, s in shapes.items()}
    out = io.BytesIO()
    written = write_update(delta, out, DTYPES[dtype])
    rounded = {k: v.to(DTYPES[dtype]) for k, v in delta.items()}
    expected = encode_tensors(rounded)
    assert out.getvalue() == expected
    assert written.size == len(expected)
    assert written.sha256 == hashlib.sha256(expected).hexdigest()
    assert written.norm == numerics.l2_norm(rounded)  # the contract's exact norm


def test_rounding_is_to_nearest_even():
    # 1 + 2^-8 lies halfway between two bfloat16 values: it rounds to the even one, 1.0;
    # 1 + 3 * 2^-8 rounds up to 1 + 2^-6 (even mantissa)
    values = torch.tensor([1 + 2**-8, 1 + 3 * 2**-8], dtype=torch.float32)
    rounded = to_update_dtype("w", values, torch.bfloat16)
    assert rounded.to(torch.float64).tolist() == [1.0, 1 + 2**-6]


def test_a_float16_overflow_is_refused_not_clamped():
    delta = {"w": torch.tensor([1.0, 70_000.0]), "b": torch.zeros(2)}
    with pytest.raises(UsageError, match=r"'w' holds 70000.*65504.*not clamped"):
        write_update(delta, io.BytesIO(), torch.float16)
    # 65519 still rounds to 65504 (nearest even): it fits
    write_update({"w": torch.tensor([65519.0])}, io.BytesIO(), torch.float16)


def test_a_non_finite_delta_is_written_and_has_no_norm():
    out = io.BytesIO()
    written = write_update({"w": torch.tensor([math.nan, 1.0])}, out, torch.float16)
    assert math.isnan(written.norm)
    assert decode_tensors(out.getvalue(), max_bytes=1024)["w"].isnan().any()


def test_delta_view_computes_trained_minus_base_from_a_file(tmp_path):
    base = {k: torch.randn_like(v) for k, v in initial_state(SPEC).items()}
    trained = {k: v + 0.25 for k, v in base.items()}
    path = tmp_path / "base.safetensors"
    path.write_bytes(encode_tensors(base))
    with TensorFile.open(path, max_bytes=1 << 20) as file:
        weights = BaseWeights(file)
        assert sorted(weights) == sorted(base) and weights.shapes["out.bias"] == (3,)
        view = DeltaView(trained, weights, weights.shapes)
        for name in base:
            assert torch.equal(view[name], trained[name] - base[name])
            assert torch.equal(weights[name], base[name])  # the file is never written to


# --- the contract --------------------------------------------------------------------------
def test_a_bfloat16_consortium_accepts_a_bfloat16_update_and_refuses_a_float32_one():
    rules = _rules("bfloat16")
    good = encode_tensors(_delta(0.01, torch.bfloat16))
    verdict = check_update(rules, SPEC, _claim(good), CTX, good)
    assert verdict.accept, verdict
    wide = encode_tensors(_delta(0.01, torch.float32))
    verdict = check_update(rules, SPEC, _claim(wide), CTX, wide)
    assert (verdict.accept, verdict.reason) == (False, "wrong_dtype")
    assert "is F32, expected BF16" in verdict.detail
    # and the float32 consortium refuses the compact one
    verdict = check_update(_rules("float32"), SPEC, _claim(good), CTX, good)
    assert (verdict.reason, "is BF16, expected F32" in verdict.detail) == ("wrong_dtype", True)


def test_a_float16_update_is_checked_on_its_widened_values():
    rules = _rules("float16")
    nan = _delta(0.01, torch.float16)
    nan["out.bias"][0] = math.inf
    blob = encode_tensors(nan)
    assert check_update(rules, SPEC, _claim(blob), CTX, blob).reason == "non_finite"
    big = encode_tensors(_delta(2.0, torch.float16))  # norm sqrt(n) * 2 > 10
    verdict = check_update(rules, SPEC, _claim(big), CTX, big)
    assert verdict.reason == "norm_exceeded"
    n = sum(v.numel() for v in initial_state(SPEC).values())
    assert repr(math.sqrt(4.0 * n)) in verdict.detail


def test_an_app_layout_follows_the_update_dtype():
    layout = contract.layout_of({"w": torch.zeros(2, 2)})
    blob = encode_tensors({"w": torch.ones(2, 2, dtype=torch.float16)})
    assert check_update(_rules("float16"), layout, _claim(blob), CTX, blob).accept
    assert contract.layout_of({"w": torch.zeros(2)}, "bfloat16") == {"w": ("BF16", (2,))}
    assert contract.layout_for(SPEC, "float16")["out.bias"] == ("F16", (3,))


# --- the aggregate -------------------------------------------------------------------------
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.rule)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 7))
def test_compact_updates_aggregate_exactly_as_their_float32_values(
    spec: AggregationSpec, dtype: torch.dtype, seed: int, n: int
):
    """Every rule widens bf16 / fp16 to float64 exactly: the aggregate of compact updates is,
    bit for bit, the aggregate of the same values given as float32 (the arithmetic of
    PROTOCOL.md §7.1), and stays float32."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"w": (6, 4), "b": (4,)}
    base = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    initial = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    compact = []
    for i in range(n):
        delta = {k: (torch.randn(s, generator=g) * 0.1).to(dtype) for k, s in shapes.items()}
        key = hashlib.sha256(f"u{i}".encode()).hexdigest()
        compact.append(UpdateInput(key, delta, 1 + 7 * i))
    wide = [
        UpdateInput(u.hash, {k: v.to(torch.float32) for k, v in u.delta.items()}, u.num_samples)
        for u in compact
    ]
    a = aggregate(spec, base, compact, initial_state=initial)
    b = aggregate(spec, base, wide, initial_state=initial)
    assert a.model_hash == b.model_hash
    assert all(v.dtype == torch.float32 for v in a.new_state.values())
    # and streamed from the stored compact blobs, as a validator recomputes it
    files = [
        UpdateInput(
            u.hash,
            TensorFile.of_bytes(encode_tensors(dict(u.delta)), max_bytes=1 << 20).tensors(),
            u.num_samples,
        )
        for u in compact
    ]
    out = io.BytesIO()
    streamed = aggregate_to(out, spec, base, files, initial_state=initial)
    assert streamed.model_hash == a.model_hash == hashlib.sha256(out.getvalue()).hexdigest()


@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_without_a_norm_the_writer_writes_the_same_bytes_and_scans_no_value_again(
    dtype: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``with_norm=False`` (a node's trainer) writes exactly the bytes it writes with the norm,
    NaN and infinity included, and runs no finiteness pass over values whose norm nobody
    asked for (red before: one pass a piece, ~0.03 CPU-s an update at 10M parameters)."""
    delta = {
        "a": torch.tensor([1.0, -2.5, 3.0e3]),
        "b": torch.tensor([[math.nan, 0.5], [math.inf, -math.inf]]),
        "c": torch.zeros(0),
    }
    with_norm, without = io.BytesIO(), io.BytesIO()
    scans: list[str] = []
    real = torch.isfinite

    def counting(tensor: torch.Tensor) -> torch.Tensor:
        scans.append("norm" if tensor.dtype == DTYPES[dtype] else "overflow")
        return real(tensor)

    monkeypatch.setattr(torch, "isfinite", counting)
    full = write_update(delta, with_norm, DTYPES[dtype])
    scanned, scans[:] = list(scans), []
    bare = write_update(delta, without, DTYPES[dtype], with_norm=False)
    monkeypatch.undo()
    assert without.getvalue() == with_norm.getvalue()
    assert (bare.size, bare.sha256, bare.content_sum) == (full.size, full.sha256, full.content_sum)
    assert math.isnan(bare.norm) and math.isnan(full.norm)  # non-finite: no norm either way
    # the half-precision overflow refusal still looks at every piece; the norm's pass is gone
    overflow = ["overflow", "overflow"] if dtype != "float32" else []
    assert scanned.count("norm") == 2 and scans == overflow
