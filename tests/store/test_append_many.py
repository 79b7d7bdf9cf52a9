"""``Ledger.append_many``: consecutive blocks in one database transaction, all or none."""

from __future__ import annotations

import pytest

from bcfl_cli.errors import StoreError
from bcfl_cli.protocol.block import Block
from bcfl_cli.protocol.tx import TxKind
from bcfl_cli.verify import verify_chain
from tests.chain.factories import make_consortium


def test_append_many_stores_a_run_of_blocks(tmp_path):
    c = make_consortium(tmp_path)
    head = c.ledger.head()
    c.ledger.head = lambda: chain[-1] if chain else head  # next_block builds on the last one
    chain: list[Block] = []
    for _ in range(5):
        block = c.next_block([])
        c.state = c.state.apply(block)
        chain.append(block)
    del c.ledger.head
    c.ledger.append_many(chain)
    c.ledger.append_many([])
    assert c.ledger.height == 5
    assert [b.hash for b in c.ledger.blocks(1, 5)] == [b.hash for b in chain]
    assert verify_chain(c.ledger, workers=1).ok


def test_append_many_is_all_or_none(tmp_path):
    c = make_consortium(tmp_path)
    head = c.ledger.head()
    chain: list[Block] = []
    c.ledger.head = lambda: chain[-1] if chain else head
    join = c.tx("erin", TxKind.JOIN_REQUEST, {"name": "erin", "roles": ["trainer"], "power": 0})
    for txs in ([], [join], []):
        block = c.next_block(txs)
        c.state = c.state.apply(block)
        chain.append(block)
    del c.ledger.head
    gap = [chain[0], chain[2]]
    with pytest.raises(StoreError, match="expected height 2"):
        c.ledger.append_many(gap)
    unlinked = [chain[0], Block(chain[2].header, chain[2].txs, chain[2].commit)]
    with pytest.raises(StoreError):
        c.ledger.append_many([chain[1], *unlinked])  # does not start at the head
    uncommitted = [chain[0], Block(chain[1].header, chain[1].txs, None)]
    with pytest.raises(StoreError, match="no commit certificate"):
        c.ledger.append_many(uncommitted)
    assert c.ledger.height == 0 and c.ledger.tx_count() == 0  # nothing of any of them
    c.ledger.append_many(chain[:2])
    with pytest.raises(StoreError):
        c.ledger.append_many(chain[1:])  # height 2 is taken: block 3 is not stored either
    assert c.ledger.height == 2 and c.ledger.tx_count() == 1
    c.ledger.append_many(chain[2:])
    assert c.ledger.height == 3
    assert verify_chain(c.ledger, workers=1).ok
