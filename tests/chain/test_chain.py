"""``Chain``: one replay from genesis, imports that validate before they persist, commit
notifications and the safety alarm."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bcfl_cli.chain import build_block, commit_with_keys
from bcfl_cli.chain.alarm import ALARM_FILE, read_alarm
from bcfl_cli.chain.chain import Chain, Commit, Persisted
from bcfl_cli.chain.state import ChainState
from bcfl_cli.errors import NodeError, VerificationError
from bcfl_cli.protocol.block import Block
from tests.chain.factories import Consortium, key_for, make_consortium, realistic_chain


def _count_applies(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    heights: list[int] = []
    original = ChainState.apply

    def counted(self: ChainState, block: Block, *args: Any, **kwargs: Any) -> ChainState:
        heights.append(block.height)
        return original(self, block, *args, **kwargs)

    monkeypatch.setattr(ChainState, "apply", counted)
    return heights


def _store(c: Consortium) -> tuple[int, str]:
    return c.ledger.height, c.ledger.head().hash


def test_open_replays_each_block_once_and_answers_from_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = realistic_chain(tmp_path)
    c.ledger.close()
    applied = _count_applies(monkeypatch)
    with Chain.open(c.home) as chain:
        assert applied == list(range(1, c.state.height + 1))
        assert chain.state.head_hash == c.state.head_hash == chain.head.hash
        assert chain.height == c.state.height
        assert chain.genesis_hash == c.genesis.hash
        assert chain.head_hash_at(0) == c.genesis.hash
        assert chain.head_hash_at(2) == c.blocks[1].hash
        assert chain.head_hash_at(chain.height + 1) is None
        assert (
            chain.validator_set_at(1)
            == ChainState.from_genesis(c.genesis, c.document).validator_set
        )
        assert chain.validator_set_at(chain.height + 1) == c.state.validator_set
        assert chain.validator_set_at(0) is None
        assert chain.validator_set_at(chain.height + 2) is None
        assert chain.state_at(chain.height) is chain.state
        assert len(applied) == c.state.height  # the queries above replayed nothing
        past = chain.state_at(2)
        assert past is not None and past.head_hash == c.blocks[1].hash
        assert chain.state_at(chain.height + 1) is None
        assert chain.alarm is None


def test_import_block_validates_then_persists_and_notifies(tmp_path: Path) -> None:
    c = make_consortium(tmp_path)
    chain = Chain(c.ledger)
    seen: list[Commit] = []
    chain.subscribe(seen.append)
    block = c.next_block([])
    assert chain.import_block(block, source="test") is Persisted.APPENDED
    assert _store(c) == (1, block.hash)
    assert chain.state.head_hash == block.hash and chain.head == block
    assert [(x.block.hash, x.source, x.previous.height, x.state.height) for x in seen] == [
        (block.hash, "test", 0, 1)
    ]
    # the same block again (sync and consensus may both deliver it): held, nothing new
    assert chain.persist(block, chain.state, source="sync") is Persisted.KNOWN
    assert len(seen) == 1


def test_a_block_that_breaks_a_rule_leaves_the_store_and_the_state_unchanged(
    tmp_path: Path,
) -> None:
    c = make_consortium(tmp_path)
    chain = Chain(c.ledger)
    seen: list[Commit] = []
    chain.subscribe(seen.append)
    unsigned = build_block(chain.state, chain.head, [], key_for("alice"), time_ms=c.clock + 10)
    one_vote = commit_with_keys(unsigned, [key_for("alice")], c.chain)  # 1 of 4: no quorum
    before, state = _store(c), chain.state
    with pytest.raises(VerificationError):
        chain.import_block(one_vote)
    assert _store(c) == before
    assert chain.state is state and seen == []


def test_persist_refuses_a_block_that_does_not_follow_the_head(tmp_path: Path) -> None:
    c = make_consortium(tmp_path)
    chain = Chain(c.ledger)
    first = c.next_block([])
    after_first = chain.validate(first)
    with pytest.raises(NodeError):
        chain.persist(first, chain.state, source="test")  # the state is not the block's
    c.state = after_first
    c.ledger.append(first)
    second = c.next_block([])
    with pytest.raises(NodeError):
        Chain(c.ledger).persist_many([(second, after_first)], source="test")


def test_persist_many_appends_consecutive_blocks_and_notifies_each(tmp_path: Path) -> None:
    c = make_consortium(tmp_path)
    chain = Chain(c.ledger)
    seen: list[int] = []
    chain.subscribe(lambda commit: seen.append(commit.block.height))
    decided = []
    for _ in range(3):
        block = c.next_block([])
        c.state = c.state.apply(block)
        decided.append((block, c.state))
        c.ledger.head = lambda b=block: b  # type: ignore[method-assign]  # next_block's parent
    del c.ledger.head
    assert chain.persist_many(decided, source="sync") is Persisted.APPENDED
    assert seen == [1, 2, 3]
    assert _store(c) == (3, decided[-1][0].hash)
    assert Chain(c.ledger).state.head_hash == chain.state.head_hash


def test_a_second_certified_block_at_a_held_height_raises_the_alarm_once(tmp_path: Path) -> None:
    c = make_consortium(tmp_path)
    path = c.home.node_dir / ALARM_FILE
    chain = Chain(c.ledger, alarm_path=path)
    genesis_state = chain.state
    ours = c.next_block([])
    theirs = c.next_block([])  # same height, later time: a fork
    assert chain.import_block(ours) is Persisted.APPENDED
    assert chain.persist(theirs, genesis_state.apply(theirs), source="peer") is Persisted.FORKED
    assert chain.alarm is not None and chain.alarm["blocks"] == [ours.hash, theirs.hash]
    assert "SAFETY ALARM" in chain.alarm["message"] and str(path) in chain.alarm["message"]
    assert read_alarm(path) == chain.alarm
    evidence = json.loads(path.read_text(encoding="utf-8"))
    assert [Block.from_dict(b).hash for b in evidence["blocks"]] == [ours.hash, theirs.hash]
    # halted: nothing more is appended, and a reopened chain still knows
    c.state = chain.state
    nxt = c.next_block([])
    assert chain.persist(nxt, chain.validate(nxt), source="consensus") is Persisted.HALTED
    assert chain.persist_many([(nxt, chain.validate(nxt))], source="sync") is Persisted.HALTED
    assert c.ledger.height == 1
    c.ledger.close()
    with Chain.open(c.home) as reopened:
        assert reopened.alarm == chain.alarm


@pytest.mark.parametrize("text", ["{", "[" * 100_000, '{"height": 1}', '{"height": "x"}'])
def test_an_unreadable_alarm_file_is_still_an_alarm(tmp_path: Path, text: str) -> None:
    path = tmp_path / ALARM_FILE
    path.write_text(text, encoding="utf-8")
    alarm = read_alarm(path)
    assert alarm is not None and alarm["height"] == -1 and str(path) in alarm["message"]
    assert read_alarm(tmp_path / "absent.json") is None
