"""Every single-byte change to a stored block, transaction or blob is caught by verify-chain.

An attacker with the file drops the append-only triggers first (they guard against bugs, not
people), then edits rows in place. Each stored JSON text gets one flipped byte inside every
token (every key and every value, so every field is covered) plus random positions; each blob
the chain references gets flipped at its ends and at random positions.
"""

from __future__ import annotations

import random
import re

import pytest

from bcfl_cli.store.ledger import Ledger
from bcfl_cli.verify import verify_chain
from tests.chain.factories import drop_triggers, realistic_chain

TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|-?[0-9]+|true|false|null')
MASKS = (0x01, 0x02, 0x20, 0x80, 0x04, 0x10)
RANDOM_PER_ROW = 6
BLOB_POSITIONS = 8


@pytest.fixture(scope="module")
def tampered(tmp_path_factory):
    root = tmp_path_factory.mktemp("tamper")
    c = realistic_chain(root)
    c.ledger.close()
    conn = drop_triggers(c.home.store_file)
    ledger = Ledger.open(c.home)
    assert verify_chain(ledger, workers=1).ok
    yield c, conn, ledger
    ledger.close()
    conn.close()


def _positions(data: bytes, rng: random.Random, *, every_token: bool) -> list[int]:
    chosen = set(rng.sample(range(len(data)), min(RANDOM_PER_ROW, len(data))))
    if every_token:
        chosen |= {rng.randrange(m.start(), m.end()) for m in TOKEN.finditer(data)}
    return sorted(chosen | {0, len(data) - 1})


def _flip(data: bytes, pos: int, rng: random.Random) -> bytes:
    out = bytearray(data)
    out[pos] ^= rng.choice(MASKS)
    return bytes(out)


def _assert_detected(ledger: Ledger, what: str) -> None:
    report = verify_chain(ledger, workers=1)
    assert not report.ok, f"undetected: {what}"


def _rows(conn):
    for height, header, commit in conn.execute('SELECT height, header, "commit" FROM blocks'):
        yield "blocks", "header", "height", height, header
        if commit is not None:
            yield "blocks", '"commit"', "height", height, commit
    for tx_hash, body in conn.execute("SELECT hash, body FROM txs"):
        yield "txs", "body", "hash", tx_hash, body


def test_every_stored_row_byte_flip_is_detected(tampered):
    c, conn, ledger = tampered
    rng = random.Random(8785)
    flips = 0
    covered_kinds = set()
    shapes_seen = set()
    for table, column, key, ident, text in list(_rows(conn)):
        original = text.encode("utf-8")
        shape = (table, column, ident == 0)
        if table == "txs":
            kind = re.search(rb'"kind":"([a-z_]+)"', original).group(1)
            covered_kinds.add(kind)
            shape = (table, kind)
        # every token of the first row of each shape (each field), random bytes of the others
        every_token = shape not in shapes_seen
        shapes_seen.add(shape)
        update = f"UPDATE {table} SET {column}=CAST(? AS TEXT) WHERE {key}=?"
        for pos in _positions(original, rng, every_token=every_token):
            conn.execute(update, (_flip(original, pos, rng), ident))
            _assert_detected(ledger, f"{table}.{column} {ident} byte {pos}")
            flips += 1
        conn.execute(update, (original, ident))
    assert verify_chain(ledger, workers=1).ok
    assert covered_kinds == {
        b"join_request",
        b"approve_member",
        b"open_round",
        b"update",
        b"validation",
        b"aggregate",
    }
    assert flips > 250, flips


def test_every_referenced_blob_byte_flip_is_detected(tampered):
    c, _conn, ledger = tampered
    rng = random.Random(6962)
    update_blobs = [tx.body["blob"] for b in c.blocks for tx in b.txs if tx.kind == "update"]
    referenced = [
        c.genesis.header.config,
        c.state.config.initial_model,
        *(h for h in update_blobs if ledger.blobs.has(h)),
        c.blocks[-1].txs[0].body["model"],
    ]
    assert len(referenced) == 5
    for digest in referenced:
        path = ledger.blobs.path_for(digest)
        original = path.read_bytes()
        positions = {0, len(original) - 1, *rng.sample(range(len(original)), BLOB_POSITIONS)}
        for pos in sorted(positions):
            path.write_bytes(_flip(original, pos, rng))
            _assert_detected(ledger, f"blob {digest} byte {pos}")
        path.write_bytes(original[:-1])
        _assert_detected(ledger, f"blob {digest} truncated")
        path.write_bytes(original)
    assert verify_chain(ledger, workers=1).ok
