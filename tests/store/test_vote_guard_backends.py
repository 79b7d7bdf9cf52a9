"""The vote guard on both backends: beside a PostgreSQL ledger it lives in that database."""

from __future__ import annotations

import threading

import pytest

from bcfl_cli.consensus.messages import EngineState, Proposal, Step
from bcfl_cli.home import Home
from bcfl_cli.protocol.block import NIL, ValidatorSet, Vote, VoteType
from bcfl_cli.store.vote_guard import DoubleSignError, PostgresVoteGuard, VoteGuard
from tests.consensus.sim import CHAIN, DIDS, KEYS, make_block


def _block(time: int = 4):
    vset = ValidatorSet.from_mapping({d: 1 for d in DIDS[:4]})
    return make_block(1, CHAIN, time, DIDS[0], vset)


def _home(tmp_path, store_backend) -> Home:
    return store_backend.use(Home.resolve(tmp_path / "home").ensure())


def test_the_guard_is_idempotent_refuses_conflicts_and_survives_reopen(tmp_path, store_backend):
    home = _home(tmp_path, store_backend)
    block = _block()
    state = EngineState(1, 0, Step.PRECOMMIT, 0, block, 0, block)
    vote = Vote(CHAIN, 1, 0, VoteType.PRECOMMIT, block.hash, DIDS[0])
    with VoteGuard.for_home(home) as guard:
        assert isinstance(guard, PostgresVoteGuard) is store_backend.is_postgres
        first = guard.sign_vote(vote, KEYS[0], state)
        assert guard.sign_vote(vote, KEYS[0], state) == first  # same vote: allowed
    assert (home.node_dir / "vote_guard.sqlite").exists() is not store_backend.is_postgres
    with VoteGuard.for_home(home) as guard:
        with pytest.raises(DoubleSignError):
            guard.sign_vote(Vote(CHAIN, 1, 0, VoteType.PRECOMMIT, NIL, DIDS[0]), KEYS[0], state)
        assert guard.state(CHAIN) == state  # the lock survives the restart
        assert guard.state("another chain") is None
        assert guard.votes_at(CHAIN, 1, DIDS[0]) == [vote]
        assert guard.signed_block(CHAIN, 1, 0, "precommit") == block.hash
        assert guard.signed_block(CHAIN, 1, 1, "precommit") is None
        p = Proposal(CHAIN, 1, 0, block, -1, DIDS[0])
        guard.sign_proposal(p, KEYS[0], state)
        with pytest.raises(DoubleSignError):
            guard.sign_proposal(Proposal(CHAIN, 1, 0, _block(8), -1, DIDS[0]), KEYS[0], state)
        assert guard.votes_at(CHAIN, 1, DIDS[0]) == [vote]  # proposals are not votes


def test_two_processes_on_one_database_cannot_both_sign(tmp_path, store_backend):
    """Two guards racing for one (height, round, step) with different blocks: one wins."""
    home = _home(tmp_path, store_backend)
    blocks = [_block(4), _block(8)]
    state = EngineState(1, 0, Step.PREVOTE, 0, None, 0, None)
    guards = [VoteGuard.for_home(home) for _ in blocks]
    outcomes: list[str] = []
    barrier = threading.Barrier(len(guards))

    def sign(guard: VoteGuard, block) -> None:
        barrier.wait(10)
        try:
            guard.record_vote(Vote(CHAIN, 1, 0, VoteType.PREVOTE, block.hash, DIDS[0]), state)
            outcomes.append(block.hash)
        except DoubleSignError:
            outcomes.append("refused")

    threads = [threading.Thread(target=sign, args=pair) for pair in zip(guards, blocks)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    for guard in guards:
        guard.close()
    assert len(outcomes) == 2 and outcomes.count("refused") == 1, outcomes
    (winner,) = [o for o in outcomes if o != "refused"]
    with VoteGuard.for_home(home) as guard:
        assert guard.signed_block(CHAIN, 1, 0, "prevote") == winner
