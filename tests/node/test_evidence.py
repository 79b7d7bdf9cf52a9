"""A node submits evidence of an equivocation once: not when it is on chain or already pending."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bcfl_cli.consensus.messages import Evidence
from bcfl_cli.protocol.block import Vote, VoteType
from bcfl_cli.protocol.tx import TxKind, make_tx
from tests.node._node_harness import LocalNode, did, key


@pytest.fixture
def local(tmp_path: Path) -> Iterator[LocalNode]:
    harness = LocalNode(tmp_path)
    harness.auto_mine = False
    harness.open_rounds = False
    yield harness
    harness.close()


def _evidence(
    local: LocalNode, height: int = 3, blocks: tuple[str, str] = ("aa", "bb")
) -> Evidence:
    a, b = (
        Vote(local.node.genesis_hash, height, 0, VoteType.PRECOMMIT, x * 32, did("dave")).signed(
            key("dave")
        )
        for x in blocks
    )
    return Evidence(a, b)


def _pending_evidence(local: LocalNode) -> list[str]:
    return [tx.author for tx in local.node.mempool.snapshot() if tx.kind is TxKind.MISBEHAVIOUR]


def test_evidence_submitted_once(local: LocalNode) -> None:
    driver = local.node.driver
    driver._evidence(_evidence(local))
    assert _pending_evidence(local) == [did("alice")]
    # The engine reports the same offence again (other conflicting votes): nothing new.
    driver._evidence(_evidence(local, blocks=("bb", "cc")))
    assert _pending_evidence(local) == [did("alice")]
    local.mine()
    assert local.state.offences == frozenset({(did("dave"), 3, 0, "precommit")})
    assert _pending_evidence(local) == []
    # On chain now: not submitted again (a restarted engine forgets what it reported).
    driver._evidence(_evidence(local))
    assert _pending_evidence(local) == []
    # Another height is another offence.
    driver._evidence(_evidence(local, height=4))
    assert _pending_evidence(local) == [did("alice")]


def test_peer_evidence_already_pending(local: LocalNode) -> None:
    ev = _evidence(local)
    theirs = make_tx(key("bob"), local.node.genesis_hash, TxKind.MISBEHAVIOUR, ev.to_body())
    local.node.pool.submit(theirs)
    local.node.driver._evidence(Evidence(ev.second, ev.first))
    assert _pending_evidence(local) == [did("bob")]
