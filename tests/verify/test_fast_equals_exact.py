"""verify-chain's fast readers against the exact path alone, on a whole stored chain.

The replay reads every stored row through fast paths: a transaction of the four kinds a chain
is made of, a header and a commit certificate decoded by msgspec and proved canonical by
re-encoding (``protocol/txwire.py``, ``protocol/block.py``), canonical JSON parsed in C
(``parse_canonical``), and rows read by position (``store/ledger.py``). Each may only accept
what the exact path accepts, with the same value, and leaves every refusal to it. Here the
whole verification is run twice, fast readers on and off, on a valid chain and on the chain
with one stored row one edit away or holding a hostile value: the same report (fault, height,
transaction, code, message, counts) and, where it verifies, the same final state.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bcfl_cli.errors import EncodingError
from bcfl_cli.protocol import block as block_module
from bcfl_cli.protocol import encoding
from bcfl_cli.protocol import tx as tx_module
from bcfl_cli.store.ledger import Ledger
from bcfl_cli.verify.chain import verify_chain_state
from tests.chain.factories import drop_triggers, realistic_chain
from tests.protocol.test_parse_canonical import one_edit_away
from tests.protocol.test_txwire import EDITS, HOSTILE


class _Refuse:
    """A msgspec decoder that accepts nothing: the caller's exact path decides."""

    def decode(self, raw: Any) -> Any:
        raise msgspec.ValidationError("fast path off")


@contextmanager
def _exact_only() -> Iterator[None]:
    with (
        mock.patch.object(tx_module, "decode_stored", lambda raw: None),
        mock.patch.object(tx_module, "parse_canonical", encoding._parse_canonical_exact),
        mock.patch.object(block_module, "parse_canonical", encoding._parse_canonical_exact),
        mock.patch.object(block_module, "_COMMIT_DECODER", _Refuse()),
        mock.patch.object(block_module, "_HEADER_DECODER", _Refuse()),
    ):
        yield


def _outcome(ledger: Ledger) -> tuple[dict[str, Any], tuple[Any, ...] | None]:
    verified = verify_chain_state(ledger, workers=1)
    report = verified.report.to_dict()
    report.pop("elapsed_s", None)
    state = verified.state
    if state is None:
        return report, None
    rnd = state.round
    return report, (
        state.height,
        state.head_hash,
        state.head_time,
        state.validator_set.hash,
        sorted(state.seen_tx),
        sorted((did, m.active, m.power) for did, m in state.members.items()),
        (rnd.number, rnd.open, rnd.base_model, rnd.model, rnd.accepted, rnd.submitted),
    )


def _same_both_ways(ledger: Ledger) -> tuple[dict[str, Any], Any]:
    fast = _outcome(ledger)
    with _exact_only():
        exact = _outcome(ledger)
    assert fast == exact
    return fast


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[sqlite3.Connection, Ledger]]:
    c = realistic_chain(tmp_path_factory.mktemp("fast-exact"))
    c.ledger.close()
    conn = drop_triggers(c.home.store_file)
    ledger = Ledger.open(c.home)
    yield conn, ledger
    ledger.close()
    conn.close()


def _rows(conn: sqlite3.Connection) -> list[tuple[str, str, str, Any, str]]:
    """Every stored JSON text: (table, column, key column, key, text)."""
    rows: list[tuple[str, str, str, Any, str]] = []
    for height, header, commit in conn.execute('SELECT height, header, "commit" FROM blocks'):
        rows.append(("blocks", "header", "height", height, header))
        if commit is not None:
            rows.append(("blocks", '"commit"', "height", height, commit))
    for tx_hash, body in conn.execute("SELECT hash, body FROM txs"):
        rows.append(("txs", "body", "hash", tx_hash, body))
    return rows


@contextmanager
def _stored(
    conn: sqlite3.Connection, row: tuple[str, str, str, Any, str], text: Any
) -> Iterator[None]:
    table, column, key, ident, original = row
    update = f"UPDATE {table} SET {column}=? WHERE {key}=?"
    conn.execute(update, (text, ident))
    try:
        yield
    finally:
        conn.execute(update, (original, ident))


def test_a_valid_chain_gives_the_same_report_and_state(
    chain: tuple[sqlite3.Connection, Ledger],
) -> None:
    _, ledger = chain
    report, state = _same_both_ways(ledger)
    assert report["fault"] is None and state is not None


@settings(
    max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.data())
def test_a_row_one_edit_away_gives_the_same_verdict(
    chain: tuple[sqlite3.Connection, Ledger], data: st.DataObject
) -> None:
    conn, ledger = chain
    row = data.draw(st.sampled_from(_rows(conn)))
    edited = one_edit_away(row[4], data, EDITS)
    with _stored(conn, row, edited):
        report, _ = _same_both_ways(ledger)
    if edited != row[4]:
        assert report["fault"] is not None  # every edit of a signed row is caught


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every place in a decoded JSON value (object keys and list indexes)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield (*prefix, key)
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield (*prefix, index)
            yield from _paths(item, (*prefix, index))


@settings(
    max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.data())
def test_a_hostile_value_in_any_field_gives_the_same_verdict(
    chain: tuple[sqlite3.Connection, Ledger], data: st.DataObject
) -> None:
    conn, ledger = chain
    row = data.draw(st.sampled_from(_rows(conn)))
    value = encoding.parse_canonical(row[4])
    path = data.draw(st.sampled_from(list(_paths(value))))
    where = value
    for step in path[:-1]:
        where = where[step]
    action = data.draw(st.sampled_from(["replace", "replace", "remove", "append"]))
    if action == "remove" and isinstance(where, dict):
        del where[path[-1]]
    elif action == "append" and isinstance(where[path[-1]], str):
        where[path[-1]] += data.draw(st.sampled_from(["\n", " ", "0", "A", "é", "\x00"]))
    else:
        where[path[-1]] = data.draw(st.sampled_from(HOSTILE))
    try:
        text = encoding.canonical(value).decode("utf-8")
    except EncodingError:  # an integer out of the safe range: the text a stranger could write
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    with _stored(conn, row, text):
        report, _ = _same_both_ways(ledger)
    if text != row[4]:  # a hostile value may be the one already there
        assert report["fault"] is not None


@pytest.mark.parametrize("column", ["hash", "kind", "author", "idx"])
def test_a_changed_index_column_gives_the_same_verdict(
    chain: tuple[sqlite3.Connection, Ledger], column: str
) -> None:
    conn, ledger = chain
    tx_hash, original = conn.execute(f"SELECT hash, {column} FROM txs LIMIT 1").fetchone()
    for value in ("update", "0" * 64, 7, -1, b"update", "did:key:z6Mk"):
        conn.execute(f"UPDATE txs SET {column}=? WHERE hash=?", (value, tx_hash))
        changed = tx_hash if column != "hash" else value
        try:
            (stored,) = conn.execute(
                f"SELECT {column} FROM txs WHERE hash=?", (changed,)
            ).fetchone()
            report, _ = _same_both_ways(ledger)
        finally:
            conn.execute(f"UPDATE txs SET {column}=? WHERE hash=?", (original, changed))
        if stored != original:  # "00..0" in the integer column idx is stored as 0
            assert report["fault"] is not None, (column, value)
