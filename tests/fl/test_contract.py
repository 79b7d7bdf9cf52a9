"""The update contract: every rejection reason is reachable, and a good update passes."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import struct
import zipfile

import pytest
import torch

from bcfl_cli.fl import contract
from bcfl_cli.fl.contract import Reason, RoundContext, UpdateClaim, Verdict, check_update
from bcfl_cli.fl.models import initial_state
from bcfl_cli.fl.tensors import encode_tensors
from bcfl_cli.protocol.spec import ContractRules, ModelSpec

SPEC = ModelSpec(architecture="mlp", input_shape=[4], num_classes=3, hidden=[5])
RULES = ContractRules(max_update_norm=10.0, min_samples=5, max_samples=1000, max_blob_bytes=4096)
BASE = "b" * 64
ALICE = "did:key:z6MkAlice"
MALLORY = "did:key:z6MkMallory"
CTX = RoundContext(trainers=frozenset({ALICE}), round=3, round_open=True, base_model=BASE)


def _delta(scale: float = 0.01) -> dict[str, torch.Tensor]:
    return {k: torch.full_like(v, scale) for k, v in initial_state(SPEC).items()}


def _claim(blob: bytes, **changes: object) -> UpdateClaim:
    fields: dict[str, object] = {
        "author": ALICE,
        "round": 3,
        "base_model": BASE,
        "blob": hashlib.sha256(blob).hexdigest(),
        "blob_size": len(blob),
        "num_samples": 50,
    }
    fields.update(changes)
    return UpdateClaim(**fields)  # type: ignore[arg-type]


def _verdict(blob: bytes | None, claim: UpdateClaim | None = None, ctx: RoundContext = CTX):
    claim = claim or _claim(blob if blob is not None else b"x")
    return check_update(RULES, SPEC, claim, ctx, blob)


def _raw(header: dict[str, object], body: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + body


GOOD = encode_tensors(_delta())


def test_a_good_update_is_accepted() -> None:
    v = _verdict(GOOD)
    assert v.accept and v.reason == "ok"
    assert v.detail.startswith("L2 norm")
    assert v.body("c" * 64) == {
        "update": "c" * 64,
        "verdict": "accept",
        "reason": "ok",
        "detail": v.detail,
    }


def test_from_body_reads_an_update_transaction() -> None:
    body = {
        "round": 3,
        "base_model": BASE,
        "blob": "a" * 64,
        "blob_size": 10,
        "num_samples": 7,
        "metrics": {},
    }
    claim = UpdateClaim.from_body(ALICE, body)
    assert claim == UpdateClaim(ALICE, 3, BASE, "a" * 64, 10, 7)


CONTEXT_CASES = [
    (_claim(GOOD, author=MALLORY), CTX, Reason.NOT_TRAINER),
    (_claim(GOOD, round=4), CTX, Reason.ROUND_NOT_OPEN),
    (_claim(GOOD), RoundContext(frozenset({ALICE}), 3, False, BASE), Reason.ROUND_NOT_OPEN),
    (_claim(GOOD), RoundContext(frozenset({ALICE}), None, False, None), Reason.ROUND_NOT_OPEN),
    (_claim(GOOD, base_model="d" * 64), CTX, Reason.WRONG_BASE_MODEL),
    (
        _claim(GOOD),
        RoundContext(frozenset({ALICE}), 3, True, BASE, frozenset({ALICE})),
        Reason.DUPLICATE_UPDATE,
    ),
    (_claim(GOOD, num_samples=4), CTX, Reason.SAMPLES_OUT_OF_BOUNDS),
    (_claim(GOOD, num_samples=1001), CTX, Reason.SAMPLES_OUT_OF_BOUNDS),
]


@pytest.mark.parametrize(("claim", "ctx", "reason"), CONTEXT_CASES)
def test_chain_context_rejections(claim: UpdateClaim, ctx: RoundContext, reason: Reason) -> None:
    v = _verdict(GOOD, claim, ctx)
    assert (v.accept, v.reason) == (False, reason.value)
    assert v.detail


def _pickle_blob() -> bytes:
    return pickle.dumps({"w": [1.0, 2.0]})


def _zip_blob() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("data.pkl", b"not a tensor")
    return buf.getvalue()


def _lying_offsets() -> bytes:
    header = {"w": {"dtype": "F32", "shape": [100], "data_offsets": [0, 400]}}
    return _raw(header, b"\0" * 16)


def _lying_shape() -> bytes:
    header = {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 16]}}
    return _raw(header, b"\0" * 16)


def _wrong_names() -> bytes:
    delta = _delta()
    delta["extra"] = torch.zeros(1)
    return encode_tensors(delta)


def _wrong_dtype() -> bytes:
    delta = _delta()
    name = sorted(delta)[0]
    delta[name] = delta[name].to(torch.float64)
    return encode_tensors(delta)


def _exotic_dtype() -> bytes:
    header = {"w": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}
    return _raw(header, b"\0" * 8)


def _wrong_shape() -> bytes:
    delta = _delta()
    name = sorted(delta)[0]
    delta[name] = torch.zeros(delta[name].numel() + 1)
    return encode_tensors(delta)


def _non_finite(value: float) -> bytes:
    delta = _delta()
    name = sorted(delta)[-1]
    delta[name] = delta[name].clone()
    delta[name].view(-1)[0] = value
    return encode_tensors(delta)


BLOB_CASES = [
    ("pickle", _pickle_blob(), Reason.MALFORMED_BLOB),
    ("zip", _zip_blob(), Reason.MALFORMED_BLOB),
    ("truncated", GOOD[: len(GOOD) - 3], Reason.MALFORMED_BLOB),
    ("tiny", b"\x01\x02", Reason.MALFORMED_BLOB),
    ("header_too_long", struct.pack("<Q", 10**6) + b"{}", Reason.MALFORMED_BLOB),
    ("header_not_json", struct.pack("<Q", 4) + b"\xff\xfe{{", Reason.MALFORMED_BLOB),
    ("offsets_lie", _lying_offsets(), Reason.MALFORMED_BLOB),
    ("shape_lies", _lying_shape(), Reason.MALFORMED_BLOB),
    ("names", _wrong_names(), Reason.WRONG_TENSOR_NAMES),
    ("dtype", _wrong_dtype(), Reason.WRONG_DTYPE),
    ("exotic_dtype", _exotic_dtype(), Reason.WRONG_DTYPE),
    ("shape", _wrong_shape(), Reason.WRONG_SHAPE),
    ("nan", _non_finite(float("nan")), Reason.NON_FINITE),
    ("inf", _non_finite(float("inf")), Reason.NON_FINITE),
    ("norm", encode_tensors(_delta(5.0)), Reason.NORM_EXCEEDED),
]


@pytest.mark.parametrize(
    ("blob", "reason"), [c[1:] for c in BLOB_CASES], ids=[c[0] for c in BLOB_CASES]
)
def test_blob_rejections(blob: bytes, reason: Reason) -> None:
    v = _verdict(blob)
    assert (v.accept, v.reason) == (False, reason.value), v.detail


def test_blob_missing() -> None:
    v = _verdict(None, _claim(GOOD))
    assert (v.accept, v.reason) == (False, "blob_missing")


def test_blob_too_large_by_claim_needs_no_blob() -> None:
    v = _verdict(None, _claim(GOOD, blob_size=RULES.max_blob_bytes + 1))
    assert v.reason == "blob_too_large"


def test_blob_too_large_by_actual_size() -> None:
    big = GOOD + b"\0" * RULES.max_blob_bytes
    v = _verdict(big, _claim(GOOD))
    assert v.reason == "blob_too_large"


def test_blob_hash_mismatch() -> None:
    other = encode_tensors(_delta(0.02))
    assert _verdict(other, _claim(GOOD)).reason == "blob_hash_mismatch"
    assert _verdict(GOOD, _claim(GOOD, blob_size=len(GOOD) + 1)).reason == "blob_hash_mismatch"


def test_every_reason_is_reachable() -> None:
    tested = {r for *_, r in CONTEXT_CASES} | {c[2] for c in BLOB_CASES}
    tested |= {Reason.OK, Reason.BLOB_MISSING, Reason.BLOB_TOO_LARGE, Reason.BLOB_HASH_MISMATCH}
    assert tested == set(Reason)


def test_norm_bound_is_inclusive_and_exact() -> None:
    delta = {k: torch.zeros_like(v) for k, v in _delta().items()}
    name = sorted(delta)[0]
    delta[name].view(-1)[0] = 6.0
    delta[name].view(-1)[1] = 8.0
    blob = encode_tensors(delta)
    assert _verdict(blob).accept  # norm exactly 10.0 == max_update_norm


def test_context_is_checked_before_the_blob() -> None:
    v = _verdict(_pickle_blob(), _claim(_pickle_blob(), author=MALLORY))
    assert v.reason == "not_trainer"


def test_layout_can_be_given_directly() -> None:
    layout = contract.layout_of({"w": torch.zeros(2, 2)})
    blob = encode_tensors({"w": torch.ones(2, 2)})
    assert check_update(RULES, layout, _claim(blob), CTX, blob).accept
    assert contract.layout_for(SPEC) == contract.layout_of(initial_state(SPEC))


def test_detail_is_bounded_and_printable() -> None:
    v = Verdict.reject("malformed_blob", "a\nb" + "x" * 1000)
    assert len(v.detail) == contract.MAX_DETAIL_CHARS
    assert v.detail.isprintable()


def test_accepted_blob_returns_the_verdict_alone() -> None:
    """It once returned the decoded delta too; nobody may hold a whole update (issue 19)."""
    verdict = contract.check_blob(RULES, contract.layout_for(SPEC), _claim(GOOD), GOOD)
    assert isinstance(verdict, Verdict) and verdict.accept
    assert verdict.detail.startswith("L2 norm ")
