"""``cosine_history``: a member is judged by its record, re-derived from the chain by every peer."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bcfl_cli.chain.state import AcceptedUpdate, ClosedRound
from bcfl_cli.errors import BlobError, VerificationError
from bcfl_cli.fl.aggregation import UpdateInput, aggregate
from bcfl_cli.fl.history import History, MemberHistory
from bcfl_cli.fl.spec import AggregationSpec
from bcfl_cli.fl.tensors import decode_tensors, encode_tensors
from bcfl_cli.node.round_driver import compute_aggregate
from tests.fl.test_checks import Chain, delta, did

RULE = AggregationSpec(rule="cosine_history")
COSINE = AggregationSpec(rule="cosine")
ZERO2 = {"x": torch.zeros(2)}


def _h(i: int) -> str:
    return hashlib.sha256(f"u{i}".encode()).hexdigest()


def _inputs(rows: list[list[float]]) -> list[UpdateInput]:
    return [
        UpdateInput(_h(i), {"x": torch.tensor(r)}, 10, author=f"m{i}") for i, r in enumerate(rows)
    ]


def _history(records: dict[str, list[float]], moved: list[float]) -> History:
    contributions = {a: {"x": torch.tensor(r, dtype=torch.float64)} for a, r in records.items()}
    return History(contributions, {"x": torch.tensor(moved, dtype=torch.float64)})


# --- the rule ------------------------------------------------------------------------------------
def test_without_history_it_is_cosine_over_the_members_that_agree_with_the_median() -> None:
    rows = [[1.0, 0.1], [1.0, -0.1], [0.9, 0.0], [-0.5, 0.0]]
    r = aggregate(RULE, ZERO2, _inputs(rows))
    expected = aggregate(COSINE, ZERO2, _inputs(rows[:3]))
    assert r.included == expected.included == sorted(_h(i) for i in range(3))
    assert r.model_hash == expected.model_hash


def test_a_member_whose_record_pulls_against_the_consortium_is_left_out() -> None:
    # m3's delta this round agrees with everyone's; its record (-3, 0) does not: judged by the
    # round alone (cosine) it counts, judged by its record it does not
    rows = [[1.0, 0.0], [1.0, 0.2], [1.0, -0.2], [0.8, 0.0]]
    history = _history({"m0": [2.0, 0.0], "m3": [-3.0, 0.0]}, moved=[2.0, 0.0])
    r = aggregate(RULE, ZERO2, _inputs(rows), history=history)
    assert r.included == sorted(_h(i) for i in range(3))
    assert r.model_hash == aggregate(COSINE, ZERO2, _inputs(rows[:3])).model_hash
    assert _h(3) in aggregate(COSINE, ZERO2, _inputs(rows)).included


def test_a_good_record_does_not_buy_trust_for_a_bad_round() -> None:
    # m3's record is excellent, but this round it sends the opposite of the median: its
    # record passes the gate, so the round is exactly cosine's, which gives m3 no trust
    rows = [[1.0, 0.0], [1.0, 0.2], [1.0, -0.2], [-1.0, 0.0]]
    history = _history({"m3": [50.0, 0.0]}, moved=[2.0, 0.0])
    r = aggregate(RULE, ZERO2, _inputs(rows), history=history)
    assert _h(3) not in r.included
    assert r.model_hash == aggregate(COSINE, ZERO2, _inputs(rows)).model_hash


def test_when_no_member_agrees_it_falls_back_to_cosine_over_all() -> None:
    rows = [[1.0, 0.0], [0.5, 0.0]]
    history = _history({"m0": [-9.0, 0.0], "m1": [-9.0, 0.0]}, moved=[5.0, 0.0])
    r = aggregate(RULE, ZERO2, _inputs(rows), history=history)
    assert r.model_hash == aggregate(COSINE, ZERO2, _inputs(rows)).model_hash


def test_an_empty_record_and_an_empty_delta_do_not_agree() -> None:
    rows = [[1.0, 0.0], [1.0, 0.1], [0.0, 0.0]]
    r = aggregate(RULE, ZERO2, _inputs(rows), history=_history({}, moved=[0.0, 0.0]))
    assert _h(2) not in r.included


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(1, 8),
    perm_seed=st.integers(0, 10_000),
    recorded=st.sets(st.integers(0, 7)),
)
def test_with_any_history_permuting_updates_never_changes_the_model(
    seed: int, n: int, perm_seed: int, recorded: set[int]
) -> None:
    g = torch.Generator().manual_seed(seed)
    inputs = [
        UpdateInput(_h(i), {"w": torch.randn(3, 4, generator=g) * 10.0 ** (i % 3 - 1)}, 5, f"m{i}")
        for i in range(n)
    ]
    history = History(
        {f"m{i}": {"w": torch.randn(3, 4, generator=g, dtype=torch.float64)} for i in recorded},
        {"w": torch.randn(3, 4, generator=g, dtype=torch.float64)},
    )
    base = {"w": torch.randn(3, 4, generator=g)}
    first = aggregate(RULE, base, inputs, history=history)
    shuffled = list(inputs)
    __import__("random").Random(perm_seed).shuffle(shuffled)
    assert aggregate(RULE, base, shuffled, history=history).model_hash == first.model_hash


# --- the members' records -----------------------------------------------------------------------
def _rounds(blobs: dict[str, bytes], seed: int, count: int) -> ClosedRound:
    g = torch.Generator().manual_seed(seed)
    closed = None
    for number in range(1, count + 1):
        accepted = []
        for author in ("a", "b", "c"):
            if (number + ord(author)) % 4 == 0:
                continue  # absent from this round
            data = encode_tensors({"w": torch.randn(5, generator=g) * 10.0 ** (number % 4 - 2)})
            digest = hashlib.sha256(data).hexdigest()
            blobs[digest] = data
            tx = hashlib.sha256(f"{number}/{author}".encode()).hexdigest()
            accepted.append(AcceptedUpdate(tx, author, digest, len(data), 10))
        closed = ClosedRound(number, tuple(accepted), closed)
    assert closed is not None
    return closed


def _bits(sums: dict[str, dict[str, torch.Tensor]]) -> dict[str, bytes]:
    return {a: encode_tensors(t) for a, t in sums.items()}


def test_records_kept_round_by_round_equal_records_rebuilt_from_genesis() -> None:
    blobs: dict[str, bytes] = {}
    last = _rounds(blobs, seed=3, count=7)

    def load(d: str) -> dict[str, torch.Tensor]:
        return decode_tensors(blobs[d], max_bytes=1 << 20)

    incremental = MemberHistory()
    for record in last.oldest_first():
        kept = incremental.contributions(record, load)
    rebuilt = MemberHistory().contributions(last, load)
    assert _bits(kept) == _bits(rebuilt)
    expected = {}
    for record in last.oldest_first():
        for u in record.accepted:
            d = load(u.blob)["w"].double()
            expected[u.author] = d if u.author not in expected else expected[u.author] + d
    assert {a: t["w"].tolist() for a, t in rebuilt.items()} == {
        a: t.tolist() for a, t in expected.items()
    }
    assert MemberHistory().contributions(None, load) == {}


def test_a_missing_blob_leaves_the_records_as_they_were() -> None:
    blobs: dict[str, bytes] = {}
    last = _rounds(blobs, seed=4, count=4)

    def load(d: str) -> dict[str, torch.Tensor]:
        return decode_tensors(blobs[d], max_bytes=1 << 20)

    def broken(d: str) -> dict[str, torch.Tensor]:
        raise BlobError(f"blob {d} is missing")

    history = MemberHistory()
    history.contributions(last.previous, load)
    with pytest.raises(BlobError):
        history.contributions(last, broken)
    with pytest.raises(BlobError):
        MemberHistory().contributions(last, broken)
    assert _bits(history.contributions(last, load)) == _bits(
        MemberHistory().contributions(last, load)
    )


# --- through the chain rules ----------------------------------------------------------------------
def _round(c: Chain, values: dict[str, float]) -> tuple[str, int]:
    c.open_round()
    txs = []
    for name, value in values.items():
        txs += c.validated(c.update(name, delta(value)))
    c.commit(txs)
    model, size = compute_aggregate(c.state, c.blobs, MemberHistory())
    agg = c.aggregate_tx(model=model, size=size)
    c.commit([agg])  # the chain rule recomputes it with the checks' own (incremental) records
    return model, size


def test_the_chain_judges_a_member_by_its_record_and_peers_agree_bit_for_bit(
    tmp_path: Path,
) -> None:
    c = Chain(tmp_path, "cosine_history")
    _round(c, {"bob": 0.01, "carol": 0.02, "dave": -0.03})
    # dave now sends what everyone sends, but its record still pulls against the consortium
    c.open_round()
    txs = []
    for name, value in {"bob": 0.01, "carol": 0.012, "dave": 0.011}.items():
        txs += c.validated(c.update(name, delta(value)))
    c.commit(txs)
    assert did("dave") in {u.author for u in c.state.round.accepted}
    # the proposer's records (a fresh cache: rebuilt from the blobs) and the checks' (kept
    # round by round) give the same model
    model, size = compute_aggregate(c.state, c.blobs, MemberHistory())
    assert c.state.closed_rounds is not None and c.state.closed_rounds.number == 1
    c.commit([c.aggregate_tx(model=model, size=size)])
    assert c.state.round.model == model
    # bob and carol only: both clipped to the median norm (bob's); with dave it would be
    # (0.01 + 0.011 + 0.011) / 3
    assert _moved(c, c.state.round.base_model, model) == pytest.approx(0.01, abs=1e-7)
    # a third round: dave's record (-0.03 + 0.011 + 0.005) still keeps it out; with dave the
    # round would move by (0.01 + 0.01 + 0.005) / 3
    before = c.state.round.model
    model3, _ = _round(c, {"bob": 0.01, "carol": 0.01, "dave": 0.005})
    assert c.state.closed_rounds is not None and c.state.closed_rounds.number == 3
    assert _moved(c, before, model3) == pytest.approx(0.01, abs=1e-7)


def _moved(c: Chain, before: str, after: str) -> float:
    old = decode_tensors(c.blobs.get(before), max_bytes=1 << 24)
    new = decode_tensors(c.blobs.get(after), max_bytes=1 << 24)
    name = sorted(new)[0]
    step = (new[name].double() - old[name].double()).flatten()
    assert torch.allclose(step, step[0].expand_as(step), atol=1e-7)
    return float(step[0])


def test_a_false_aggregate_under_cosine_history_breaks_the_block(tmp_path: Path) -> None:
    c = Chain(tmp_path, "cosine_history")
    _round(c, {"bob": 0.01, "carol": 0.02, "dave": -0.03})
    c.open_round()
    txs = []
    for name, value in {"bob": 0.01, "carol": 0.012, "dave": 0.011}.items():
        txs += c.validated(c.update(name, delta(value)))
    c.commit(txs)
    # what plain cosine (no record) would give: dave counted; the chain rule refuses it
    inputs = [
        UpdateInput(u.tx, decode_tensors(c.blobs.get(u.blob), max_bytes=1 << 24), 50, u.author)
        for u in c.state.round.accepted
    ]
    base = decode_tensors(c.blobs.get(c.state.round.base_model), max_bytes=1 << 24)
    naive = aggregate(RULE, base, inputs)  # no history: dave's record ignored
    c.blobs.put(naive.model_bytes)
    with pytest.raises(VerificationError) as info:
        c.commit([c.aggregate_tx(model=naive.model_hash, size=len(naive.model_bytes))])
    assert "aggregate_mismatch" in info.value.message
