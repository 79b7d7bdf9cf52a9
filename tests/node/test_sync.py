"""Sync's safety checks in-process: conflicting certified blocks raise the alarm, and only they."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bcfl_cli.chain import build_block, commit_with_keys
from bcfl_cli.node.peers import PeerInfo
from bcfl_cli.node.sync import (
    LIVE_SYNC_INTERVAL_S,
    SYNC_INTERVAL_S,
    CachingChecks,
    certificate_valid,
)
from bcfl_cli.protocol.tx import TxKind
from tests.node._node_harness import FOUNDERS, LocalNode, did, key


@pytest.fixture
def local(tmp_path: Path) -> Iterator[LocalNode]:
    harness = LocalNode(tmp_path)
    harness.auto_mine = False
    yield harness
    harness.close()


def rival_block(local: LocalNode, signers: list[str]):  # type: ignore[no-untyped-def]
    """Another block at height 1 than the one the node holds, certified by ``signers``."""
    node = local.node
    genesis = node.ledger.block(0)
    from bcfl_cli.chain import ChainState

    state = ChainState.from_genesis(genesis, node.chain.document)
    block = build_block(state, genesis, [], key("bob"), time_ms=genesis.header.time + 7)
    return commit_with_keys(block, [key(n) for n in signers], node.genesis_hash)


def test_conflicting_certified_block_raises_the_alarm(local: LocalNode) -> None:
    ours = local.mine()
    assert ours is not None and ours.height == 1
    node = local.node
    theirs = rival_block(local, list(FOUNDERS))
    assert theirs.hash != ours.hash
    assert certificate_valid(node.genesis_hash, theirs, node.chain.validator_set_at(1))  # type: ignore[arg-type]
    asyncio.run(node.syncer._conflict(PeerInfo("http://evil.example"), theirs))
    alarm = node.chain.alarm
    assert alarm is not None and set(alarm["blocks"]) == {ours.hash, theirs.hash}
    evidence = json.loads((node.home.node_dir / "alarm.json").read_text())
    assert evidence["height"] == 1 and len(evidence["blocks"]) == 2
    status = local.client.get("/v1/status").json()
    assert status["alarm"]["height"] == 1 and "SAFETY ALARM" in status["alarm"]["message"]
    # the node stops following: nothing more is appended
    assert local.mine() is None or node.state.height == 1
    assert node.ledger.height == 1


def test_uncertified_rival_is_ignored(local: LocalNode) -> None:
    local.mine()
    node = local.node
    theirs = rival_block(local, ["alice", "bob"])  # 2 of 4: no quorum
    assert not certificate_valid(node.genesis_hash, theirs, node.chain.validator_set_at(1))  # type: ignore[arg-type]
    peer = PeerInfo("http://liar.example")
    asyncio.run(node.syncer._conflict(peer, theirs))
    assert node.chain.alarm is None and peer.error is not None
    # our own block again is no conflict at all
    asyncio.run(node.syncer._conflict(peer, node.ledger.block(1)))
    assert node.chain.alarm is None


class _Counting:
    def __init__(self, inner) -> None:  # type: ignore[no-untyped-def]
        self.inner = inner
        self.updates = 0

    def check_update(self, state, tx):  # type: ignore[no-untyped-def]
        self.updates += 1
        return self.inner.check_update(state, tx)

    def check_aggregate(self, state, tx) -> None:  # type: ignore[no-untyped-def]
        self.inner.check_aggregate(state, tx)


def test_caching_checks_compute_each_verdict_once(local: LocalNode) -> None:
    node = local.node
    local.mine()  # opens round 1
    state = node.state
    from tests.node._chain_fixture import Chain

    chain = Chain(node.ledger, state, node.chain.head)
    update = chain.update("bob", scale=0.01)
    counting = _Counting(node.checks.inner)
    cache = CachingChecks(counting)
    assert cache.cached_only().__class__.__name__ == "_CachedOnly"
    with pytest.raises(Exception, match="no verdict prepared"):
        cache.cached_only().check_update(state, update)
    first = cache.check_update(state, update)
    again = cache.check_update(state, update)
    assert first is again and counting.updates == 1 and first.accept
    assert cache.cached_only().check_update(state, update) is first
    assert update.kind is TxKind.UPDATE and update.author == did("bob")


def test_sync_polls_less_while_consensus_keeps_up_and_at_once_when_behind(
    local: LocalNode,
) -> None:
    syncer = local.node.syncer
    assert syncer.interval_s() == SYNC_INTERVAL_S  # no commit of its own yet: poll each second
    syncer.note_consensus_commit()
    assert syncer.interval_s() == LIVE_SYNC_INTERVAL_S
    syncer._consensus_commit_at -= 60.0  # consensus went quiet: back to every second
    assert syncer.interval_s() == SYNC_INTERVAL_S
    syncer.behind()  # a message from heights ahead: pass now
    assert syncer._wake.is_set()
    syncer._wake.clear()
    syncer._last_pass_at = time.monotonic()
    syncer.behind()  # ... but never more often than the usual polling
    assert not syncer._wake.is_set()
