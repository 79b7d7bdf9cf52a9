"""The process pool (signatures and blobs checked by workers while the rules replay) must name
exactly the fault that in-process verification names, whatever is broken and wherever."""

from __future__ import annotations

import random

import pytest

import bcfl_cli.verify.chain as verify_module
from bcfl_cli.home import Home
from bcfl_cli.protocol.tx import TxKind
from bcfl_cli.store.ledger import Ledger
from bcfl_cli.verify import verify_chain
from tests.chain.factories import (
    drop_triggers,
    make_consortium,
    realistic_chain,
    update_body,
    validation,
)
from tests.verify.test_tamper import _flip, _positions, _rows


@pytest.fixture
def pooled(monkeypatch):
    """Even a five-block chain goes through the pool, two blocks a batch."""
    monkeypatch.setattr(verify_module, "PARALLEL_MIN_BLOCKS", 1)
    monkeypatch.setattr(verify_module, "CHUNK_BLOCKS", 2)


def _both(ledger: Ledger):
    alone = verify_chain(ledger, workers=1)
    pool = verify_chain(ledger, workers=2)
    assert pool.fault == alone.fault
    assert (pool.height, pool.head, pool.blocks) == (alone.height, alone.head, alone.blocks)
    return alone


def test_honest_chain_counts_alike(tmp_path, pooled, store_backend):
    """On both backends: forked workers must not disturb the parent's database connections."""
    store_backend.use(Home.resolve(tmp_path))
    c = realistic_chain(tmp_path)
    report = _both(c.ledger)
    assert report.ok
    pool = verify_chain(c.ledger, workers=2)
    assert (pool.signatures, pool.blobs, pool.txs) == (
        report.signatures,
        report.blobs,
        report.txs,
    )
    assert c.ledger.height == report.height and c.ledger.tx_count() == report.txs
    c.ledger.close()


def test_blob_faults_are_named_alike(tmp_path, pooled):
    c = realistic_chain(tmp_path)
    update = c.blocks[3].txs[0]
    aggregate = c.blocks[-1].txs[0]
    model = c.ledger.blobs.path_for(aggregate.body["model"])
    original = model.read_bytes()
    model.write_bytes(original + b"!")
    report = _both(c.ledger)
    assert (report.fault.height, report.fault.tx, report.fault.code) == (
        5,
        aggregate.hash,
        "blob_corrupt",
    )
    model.write_bytes(original)
    c.ledger.blobs.path_for(update.body["blob"]).unlink()
    report = _both(c.ledger)
    assert (report.fault.height, report.fault.tx, report.fault.code) == (
        4,
        update.hash,
        "blob_missing",
    )
    assert report.height == 3


def test_a_rule_fault_beats_a_blob_fault_of_the_same_block(tmp_path, pooled):
    c = make_consortium(tmp_path)
    base = c.state.round.model
    c.commit(
        [c.tx("alice", TxKind.OPEN_ROUND, {"round": 1, "base_model": base, "deadline_height": 6})]
    )
    update = c.tx("bob", TxKind.UPDATE, update_body(c, 1, b"never stored", store=False))
    # the blob is missing, and the validation is not the proposer's (alice)
    c.ledger.append(c.next_block([update, validation(c, update, proposer="bob")]))
    report = _both(c.ledger)
    assert (report.fault.height, report.fault.code) == (2, "not_proposer")


def test_a_signature_fault_beats_a_blob_fault_of_the_same_block(tmp_path, pooled):
    c = realistic_chain(tmp_path)
    update = c.blocks[3].txs[0]
    c.ledger.blobs.path_for(update.body["blob"]).unlink()
    c.ledger.close()
    conn = drop_triggers(c.home.store_file)
    (body,) = conn.execute("SELECT body FROM txs WHERE hash=?", (update.hash,)).fetchone()
    sig = body[8:136]
    forged = body.replace(sig, sig[:-1] + ("0" if sig[-1] != "0" else "1"))
    conn.execute("UPDATE txs SET body=? WHERE hash=?", (forged, update.hash))
    conn.close()
    with Ledger.open(c.home) as ledger:
        report = _both(ledger)
    assert (report.fault.height, report.fault.tx, report.fault.code) == (
        4,
        update.hash,
        "bad_tx_signature",
    )


def test_tampered_rows_are_named_alike(tmp_path, pooled):
    c = realistic_chain(tmp_path)
    c.ledger.close()
    conn = drop_triggers(c.home.store_file)
    rng = random.Random(1908)
    flips = 0
    with Ledger.open(c.home) as ledger:
        for table, column, key, ident, text in list(_rows(conn)):
            original = text.encode("utf-8")
            update = f"UPDATE {table} SET {column}=CAST(? AS TEXT) WHERE {key}=?"
            for pos in rng.sample(_positions(original, rng, every_token=False), 3):
                conn.execute(update, (_flip(original, pos, rng), ident))
                assert not _both(ledger).ok, f"undetected: {table}.{column} {ident} byte {pos}"
                flips += 1
            conn.execute(update, (original, ident))
        assert _both(ledger).ok
    conn.close()
    assert flips >= 40, flips


def _freezes_seen(monkeypatch) -> list[int]:
    """``gc.get_freeze_count()`` as each helper is forked (what the replay runs beside)."""
    import gc

    seen: list[int] = []
    real = verify_module.SharedChecks.__init__

    def spy(self, *args, **kwargs):
        seen.append(gc.get_freeze_count())
        real(self, *args, **kwargs)

    monkeypatch.setattr(verify_module.SharedChecks, "__init__", spy)
    return seen


def test_the_callers_objects_are_frozen_for_the_pass_only(tmp_path, pooled, monkeypatch):
    """A pass keeps the caller's objects out of the collector's walks (and, forked, their pages
    from being copied) and hands them back after it, whatever the verdict."""
    import gc

    seen = _freezes_seen(monkeypatch)
    c = realistic_chain(tmp_path)
    assert gc.get_freeze_count() == 0
    assert verify_chain(c.ledger, workers=2).ok
    assert seen and seen[0] > 0
    assert gc.get_freeze_count() == 0
    c.ledger.blobs.path_for(c.blocks[-1].txs[0].body["model"]).unlink()
    assert verify_chain(c.ledger, workers=2).fault.code == "blob_missing"
    assert gc.get_freeze_count() == 0
    c.ledger.close()


def test_a_callers_own_freeze_or_disabled_collector_is_left_alone(tmp_path, pooled, monkeypatch):
    import gc

    seen = _freezes_seen(monkeypatch)
    c = realistic_chain(tmp_path)
    gc.disable()
    try:
        assert verify_chain(c.ledger, workers=2).ok
        assert not gc.isenabled() and gc.get_freeze_count() == 0
    finally:
        gc.enable()
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        assert verify_chain(c.ledger, workers=2).ok
        assert gc.get_freeze_count() == frozen  # not unfrozen by the pass
    finally:
        gc.unfreeze()
    assert seen[0] == 0
    c.ledger.close()
