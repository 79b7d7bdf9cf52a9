"""An update summarised as its bytes stream in gets the verdict the full check gives its file,
bit for bit (issue 19: the check after an upload reads no byte again); anything unusual leaves
no summary, and the full check decides."""

from __future__ import annotations

import hashlib
import math
import struct
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bcfl_cli.fl import contract
from bcfl_cli.fl.contract import UpdateClaim, check_blob, finite_l2_norm
from bcfl_cli.fl.numerics import SMALL_SUM
from bcfl_cli.fl.tensorfile import TensorFile
from bcfl_cli.fl.tensors import encode_tensors
from bcfl_cli.fl.update_summary import (
    StreamedSummary,
    SummaryFeed,
    UpdateSummaries,
    UpdateSummary,
)
from bcfl_cli.protocol.spec import ContractRules

LAYOUT = {"a.weight": ("F32", (40, 100)), "a.bias": ("F32", (40,)), "b.weight": ("F32", (3, 40))}


def _update(seed: int, scale: float = 1e-2) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=gen) * scale for name, (_, shape) in LAYOUT.items()}


def _streamed(data: bytes, cuts: list[int]) -> UpdateSummary | None:
    summary = StreamedSummary(len(data))
    start = 0
    for cut in sorted({min(max(c, 0), len(data)) for c in cuts}):
        summary.feed(data[start:cut])
        start = cut
    summary.feed(data[start:])
    return summary.result()


def _claim(data: bytes) -> UpdateClaim:
    return UpdateClaim("did:key:z6Mk", 1, "0" * 64, hashlib.sha256(data).hexdigest(), len(data), 10)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    cuts=st.lists(st.integers(0, 20_000), max_size=12),
    scale=st.sampled_from([1e-30, 1e-3, 1.0, 1e15]),
)
def test_a_summary_fed_in_any_pieces_is_the_files_layout_and_exact_norm(
    seed: int, cuts: list[int], scale: float
) -> None:
    data = encode_tensors(_update(seed, scale))
    summary = _streamed(data, cuts)
    assert summary is not None
    tensors = TensorFile.of_bytes(data, max_bytes=len(data))
    non_finite, norm = finite_l2_norm(tensors)
    assert non_finite is None
    assert summary.layout == tensors.layout
    assert struct.pack("<d", summary.norm) == struct.pack("<d", norm)  # the same bits


@pytest.mark.parametrize("max_norm", [100.0, 0.5, 1e-9])
def test_the_verdict_from_a_summary_is_the_verdict_from_the_file(
    max_norm: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = encode_tensors(_update(3))
    claim = _claim(data)
    rules = ContractRules(max_update_norm=max_norm)
    full = check_blob(rules, LAYOUT, claim, data)
    summary = _streamed(data, [5, 100, 9000])
    assert summary is not None

    def unread(*args: object, **kw: object) -> None:
        raise AssertionError("a summarised update is not read again")

    monkeypatch.setattr(contract, "sha256_of", unread)
    monkeypatch.setattr(contract, "finite_l2_norm", unread)
    assert check_blob(rules, LAYOUT, claim, data, summary=summary) == full
    # no blob at all is judged as before
    assert check_blob(rules, LAYOUT, claim, None, summary=summary).reason == "blob_missing"


def test_a_wrong_layout_gets_the_same_reason_from_a_summary() -> None:
    data = encode_tensors(_update(4))
    claim = _claim(data)
    rules = ContractRules()
    summary = _streamed(data, [])
    assert summary is not None
    expected = {**LAYOUT, "b.weight": ("F32", (4, 40))}
    assert check_blob(rules, expected, claim, data, summary=summary) == check_blob(
        rules, expected, claim, data
    )
    assert not check_blob(rules, expected, claim, data).accept


def test_unusual_blobs_leave_no_summary() -> None:
    good = _update(5)
    nan = {**good, "a.bias": torch.full((40,), math.nan)}
    half = {name: t.to(torch.float16) for name, t in good.items()}
    small = {"w": torch.ones(SMALL_SUM)}  # the full check's general path: no summary
    for tensors in (nan, half, small):
        assert _streamed(encode_tensors(tensors), [77]) is None
    data = encode_tensors(good)
    assert StreamedSummary(len(data) + 4).result() is None  # nothing fed
    short = StreamedSummary(len(data) + 4)
    short.feed(data)
    assert short.result() is None  # fewer bytes than the size
    long = StreamedSummary(len(data) - 4)
    long.feed(data)
    assert long.result() is None  # more bytes than the size
    junk = np.random.default_rng(1).bytes(len(data))
    assert _streamed(junk, [8, 100]) is None
    assert _streamed(b"\xff" * 8 + data[8:], []) is None  # an impossible header length
    assert _streamed(b"", []) is None


def test_summaries_keep_the_last_ones_only() -> None:
    summaries = UpdateSummaries(keep=2)
    summary = UpdateSummary(10, {}, 0)
    for name in "abc":
        summaries.put(name * 64, summary)
    assert summaries.get("a" * 64) is None and summaries.get("c" * 64) is summary
    assert len(summaries) == 2


@settings(max_examples=60, deadline=None)
@given(
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), max_size=4),
    cut=st.integers(0, 200),
    cuts=st.lists(st.integers(0, 20_000), max_size=6),
)
def test_whenever_hostile_bytes_get_a_summary_its_verdict_is_the_files(
    flips: list[tuple[int, int]], cut: int, cuts: list[int]
) -> None:
    """Flipped bytes (in the header, the length, the values) and cut tails: a summary, when
    one is made, never judges differently from the full check of the same bytes."""
    data = bytearray(encode_tensors(_update(6)))
    for position, mask in flips:
        data[position % len(data)] ^= mask
    blob = bytes(data[: len(data) - cut])
    summary = _streamed(blob, cuts)
    if summary is not None:
        claim = _claim(blob)
        for rules in (ContractRules(), ContractRules(max_update_norm=0.5)):
            assert check_blob(rules, LAYOUT, claim, blob, summary=summary) == check_blob(
                rules, LAYOUT, claim, blob
            )


def test_a_feed_takes_bytes_in_order_and_keeps_a_summary_only_of_the_named_content() -> None:
    """A trainer's push offers its update's chunks by offset from several threads: repeats are
    ignored, a gap or a backlog past the bound drops the summary, and a summary is given only
    for bytes that hash to the name asked."""
    data = encode_tensors(_update(7))
    digest = hashlib.sha256(data).hexdigest()
    piece = 4096
    with ThreadPoolExecutor(max_workers=1) as worker:
        feed = SummaryFeed(len(data), worker, backlog_bytes=1 << 30)
        for offset in range(0, len(data), piece):
            feed.offer(offset, data[offset : offset + piece])
            feed.offer(0, data[:piece])  # a lagging push reading an early chunk again
        summary = feed.result(digest)
        assert summary is not None and summary == _streamed(data, [])
        assert SummaryFeed(len(data), worker, backlog_bytes=1 << 30).result(digest) is None
        other = SummaryFeed(len(data), worker, backlog_bytes=1 << 30)
        other.offer(0, data)
        assert other.result("0" * 64) is None  # fed bytes that do not hash to that name
        gap = SummaryFeed(len(data), worker, backlog_bytes=1 << 30)
        gap.offer(0, data[:piece])
        gap.offer(2 * piece, data[2 * piece :])  # a push resumed past what was fed
        gap.offer(piece, data[piece : 2 * piece])
        assert gap.result(digest) is None
        full = SummaryFeed(len(data), worker, backlog_bytes=piece - 1)
        full.offer(0, data)
        assert full.result(digest) is None
