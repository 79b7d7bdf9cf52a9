"""Proposer rotation, vote guard, evidence, message encoding, signature checks."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bcfl_cli.consensus import (
    BroadcastVote,
    Commit,
    CommitReceived,
    Engine,
    EngineState,
    Evidence,
    LockProof,
    Proposal,
    ProposalReceived,
    Recheck,
    ScheduleTimeout,
    StartHeight,
    Step,
    TimeoutConfig,
    TimeoutFired,
    TimeoutKind,
    Validity,
    VoteReceived,
    proposer,
)
from bcfl_cli.errors import EncodingError
from bcfl_cli.protocol.block import NIL, Block, CommitCertificate, ValidatorSet, Vote, VoteType
from bcfl_cli.protocol.tx import TxKind, validate_body
from bcfl_cli.store.vote_guard import DoubleSignError, VoteGuard

from .sim import CHAIN, DIDS, KEYS, make_block


def _vset(powers: list[int]) -> ValidatorSet:
    return ValidatorSet.from_mapping({DIDS[i]: p for i, p in enumerate(powers)})


def test_proposer_frequency_follows_power() -> None:
    vset = _vset([1, 2, 3, 4])
    counts = Counter(proposer(vset, h, 0) for h in range(10 * 10))
    assert [counts[DIDS[i]] for i in range(4)] == [10, 20, 30, 40]
    assert proposer(vset, 5, 2) == proposer(vset, 7, 0)  # a function of (set, h + r) only


def test_equal_power_rotates_through_everyone() -> None:
    vset = _vset([1] * 7)
    assert len({proposer(vset, 0, r) for r in range(7)}) == 7


class _App:
    def propose(self, height: int, round: int) -> Block:
        return make_block(height, CHAIN, 2, DIDS[0], _vset([1] * 4))

    def validate(self, block: Block) -> Validity:
        return Validity.VALID


def _engine() -> Engine:
    engine = Engine(chain=CHAIN, me=DIDS[3], app=_App())
    engine.handle(StartHeight(1, _vset([1] * 4)))
    return engine


def test_double_vote_yields_evidence_for_a_misbehaviour_tx() -> None:
    engine = _engine()
    a = Vote(CHAIN, 1, 0, VoteType.PREVOTE, NIL, DIDS[1]).signed(KEYS[1])
    b = Vote(CHAIN, 1, 0, VoteType.PREVOTE, "ab" * 32, DIDS[1]).signed(KEYS[1])
    engine.handle(VoteReceived(a))
    actions = engine.handle(VoteReceived(b))
    evidence = [x for x in actions if isinstance(x, Evidence)]
    assert len(evidence) == 1 and evidence[0].offender == DIDS[1]
    validate_body(TxKind.MISBEHAVIOUR, evidence[0].to_body())
    assert not [x for x in engine.handle(VoteReceived(b)) if isinstance(x, Evidence)]


def test_votes_with_bad_signatures_or_strangers_are_not_counted() -> None:
    engine = _engine()
    good = Vote(CHAIN, 1, 0, VoteType.PREVOTE, NIL, DIDS[1]).signed(KEYS[1])
    forged = Vote(CHAIN, 1, 0, VoteType.PREVOTE, NIL, DIDS[2], good.signature)
    stranger = Vote(CHAIN, 1, 0, VoteType.PREVOTE, NIL, DIDS[5]).signed(KEYS[5])
    for vote in (forged, stranger):
        engine.handle(VoteReceived(vote))
    assert engine.votes.get(0, VoteType.PREVOTE).power == 0
    engine.handle(VoteReceived(good))
    assert engine.votes.get(0, VoteType.PREVOTE).power == 1


def test_proposal_round_trips_and_refuses_a_swapped_block() -> None:
    block = make_block(1, CHAIN, 4, DIDS[0], _vset([1] * 4))
    p = Proposal(CHAIN, 1, 0, block, -1, DIDS[0]).signed(KEYS[0])
    again = Proposal.from_dict(p.to_dict())
    assert again == p and again.signature_valid()
    other = make_block(1, CHAIN, 6, DIDS[0], _vset([1] * 4))
    with pytest.raises(Exception, match="names a block"):
        Proposal.from_dict({**p.to_dict(), "payload": other.to_dict()})


def test_vote_guard_is_idempotent_refuses_conflicts_and_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "vote_guard.sqlite"
    block = make_block(1, CHAIN, 4, DIDS[0], _vset([1] * 4))
    state = EngineState(1, 0, Step.PRECOMMIT, 0, block, 0, block)
    vote = Vote(CHAIN, 1, 0, VoteType.PRECOMMIT, block.hash, DIDS[0])
    with VoteGuard(path) as guard:
        first = guard.sign_vote(vote, KEYS[0], state)
        assert guard.sign_vote(vote, KEYS[0], state) == first  # same vote: allowed
    with VoteGuard(path) as guard:
        with pytest.raises(DoubleSignError):
            guard.sign_vote(Vote(CHAIN, 1, 0, VoteType.PRECOMMIT, NIL, DIDS[0]), KEYS[0], state)
        assert guard.state(CHAIN) == state  # the lock survives the restart
        assert guard.votes_at(CHAIN, 1, DIDS[0]) == [vote]
        p = Proposal(CHAIN, 1, 0, block, -1, DIDS[0])
        guard.sign_proposal(p, KEYS[0], state)
        other = make_block(1, CHAIN, 8, DIDS[0], _vset([1] * 4))
        with pytest.raises(DoubleSignError):
            guard.sign_proposal(Proposal(CHAIN, 1, 0, other, -1, DIDS[0]), KEYS[0], state)


def test_restored_engine_stays_locked() -> None:
    vset = _vset([1] * 4)
    block = make_block(1, CHAIN, 4, DIDS[0], vset)
    state = EngineState(1, 0, Step.PRECOMMIT, 0, block, 0, block)
    engine = Engine(chain=CHAIN, me=DIDS[3], app=_App(), restored=state)
    engine.handle(StartHeight(1, vset))
    assert (engine.locked_round, engine.locked_block, engine.step) == (0, block, Step.PRECOMMIT)


@given(st.lists(st.integers(min_value=1, max_value=9), min_size=1, max_size=7))
@settings(max_examples=50, deadline=None)
def test_each_validator_proposes_in_proportion_to_power(powers: list[int]) -> None:
    vset = _vset(powers)
    g = math.gcd(*powers)
    period = sum(powers) // g
    counts = Counter(proposer(vset, h, 0) for h in range(period))
    assert [counts[DIDS[i]] for i in range(len(powers))] == [p // g for p in powers]


class _Missing(_App):
    """A proposal whose blob is not here yet: UNKNOWN until ``arrived``."""

    arrived = False

    def validate(self, block: Block) -> Validity:
        return Validity.VALID if self.arrived else Validity.UNKNOWN


def test_unknown_validity_waits_for_the_blob_then_prevotes() -> None:
    vset = _vset([1] * 4)
    app = _Missing()
    engine = Engine(chain=CHAIN, me=DIDS[3], app=app)
    engine.handle(StartHeight(1, vset))
    lead = DIDS.index(proposer(vset, 1, 0))
    block = make_block(1, CHAIN, 4, DIDS[lead], vset)
    p = Proposal(CHAIN, 1, 0, block, -1, DIDS[lead]).signed(KEYS[lead])
    assert not [a for a in engine.handle(ProposalReceived(p)) if isinstance(a, BroadcastVote)]
    app.arrived = True
    votes = [a for a in engine.handle(Recheck()) if isinstance(a, BroadcastVote)]
    assert [v.vote.block for v in votes] == [block.hash]


def test_locked_validator_prevotes_nil_for_another_block() -> None:
    vset = _vset([1] * 4)
    locked = make_block(1, CHAIN, 4, DIDS[0], vset)
    state = EngineState(1, 0, Step.PRECOMMIT, 0, locked, 0, locked)
    engine = Engine(chain=CHAIN, me=DIDS[3], app=_App(), restored=state)
    engine.handle(StartHeight(1, vset))
    engine.handle(TimeoutFired(TimeoutKind.PRECOMMIT, 1, 0))  # on to round 1
    lead = DIDS.index(proposer(vset, 1, 1))
    assert lead != 3  # someone else proposes a different block in round 1
    other = make_block(1, CHAIN, 8, DIDS[lead], vset)
    p = Proposal(CHAIN, 1, 1, other, -1, DIDS[lead]).signed(KEYS[lead])
    votes = [a for a in engine.handle(ProposalReceived(p)) if isinstance(a, BroadcastVote)]
    assert [v.vote.block for v in votes] == [NIL]


@pytest.mark.parametrize("kind", list(TimeoutKind))
def test_timeout_schedule_doubles_from_a_fast_round_zero_up_to_the_cap(kind: TimeoutKind) -> None:
    config = TimeoutConfig()
    base = config.duration(kind, 0)
    assert base == {"propose": 3_000}.get(kind.value, 1_000)
    schedule = [config.duration(kind, r) for r in range(40)]
    assert schedule[:4] == [base, 2 * base, 4 * base, 8 * base]
    assert all(a <= b for a, b in zip(schedule, schedule[1:], strict=False))  # monotone
    assert max(schedule) == schedule[-1] == config.max_ms == 60_000  # capped
    assert config.duration(kind, 10**9) == 60_000  # a huge round neither overflows nor hangs


def test_timeout_schedule_options() -> None:
    linear = TimeoutConfig(propose_ms=3_000, delta_ms=500, backoff=1.0)  # the paper's §3
    assert [linear.duration(TimeoutKind.PROPOSE, r) for r in range(4)] == [
        3_000,
        3_500,
        4_000,
        4_500,
    ]
    slow = TimeoutConfig(propose_ms=1_000, backoff=1.5, max_ms=3_000)
    assert [slow.duration(TimeoutKind.PROPOSE, r) for r in range(5)] == [
        1_000,
        1_500,
        2_250,
        3_000,
        3_000,
    ]
    big = TimeoutConfig(propose_ms=90_000)  # a round-0 timeout above the cap is kept, not cut
    assert big.duration(TimeoutKind.PROPOSE, 0) == big.duration(TimeoutKind.PROPOSE, 5) == 90_000
    for bad in ({"backoff": 0.5}, {"max_ms": 0}, {"prevote_ms": -1}):
        with pytest.raises(ValueError):
            TimeoutConfig(**bad)  # type: ignore[arg-type]


def test_engine_timeouts_grow_with_the_round_and_reset_at_each_height() -> None:
    vset = _vset([1] * 4)
    config = TimeoutConfig(propose_ms=1_000, prevote_ms=500, precommit_ms=500, max_ms=20_000)
    engine = Engine(chain=CHAIN, me=DIDS[3], app=_App(), timeouts=config)

    def propose_timeouts(actions: list) -> list[tuple[int, int, int]]:
        return [
            (a.height, a.round, a.duration_ms)
            for a in actions
            if isinstance(a, ScheduleTimeout) and a.kind is TimeoutKind.PROPOSE
        ]

    seen = propose_timeouts(engine.handle(StartHeight(1, vset)))
    for r in range(6):  # every round of height 1 fails: its precommit timeout starts r + 1
        seen += propose_timeouts(engine.handle(TimeoutFired(TimeoutKind.PRECOMMIT, 1, r)))
    assert seen == [(1, r, min(1_000 * 2**r, 20_000)) for r in range(7)]
    assert propose_timeouts(engine.handle(StartHeight(2, vset))) == [(2, 0, 1_000)]


def _prevotes(actions: list) -> list[str]:  # type: ignore[type-arg]
    return [
        a.vote.block
        for a in actions
        if isinstance(a, BroadcastVote) and a.vote.type is VoteType.PREVOTE
    ]


def test_a_proposal_dated_past_the_clock_gets_a_nil_prevote_but_is_still_decided() -> None:
    """The prevote rule on the block time (PROTOCOL.md §6.2) is asked of fresh proposals only:
    an untimely one gets a nil prevote at once (without validating it); a re-proposal backed
    by a quorum of prevotes, and a block a quorum precommitted, do not depend on our clock."""
    vset = _vset([1] * 4)
    asked: list[str] = []

    def timely(block: Block) -> bool:
        asked.append(block.hash)
        return False

    engine = Engine(chain=CHAIN, me=DIDS[3], app=_App(), timely=timely)
    engine.handle(StartHeight(1, vset))
    block = make_block(1, CHAIN, 4, proposer(vset, 1, 0), vset)
    author = DIDS.index(proposer(vset, 1, 0))
    fresh = Proposal(CHAIN, 1, 0, block, -1, DIDS[author]).signed(KEYS[author])
    assert _prevotes(engine.handle(ProposalReceived(fresh))) == [NIL]
    assert asked == [block.hash]
    # the others prevoted it (their clocks agree with the proposer's): we lock on it and
    # precommit it (L36 does not ask the clock), and a quorum of precommits decides it
    for i in range(3):
        for vtype in (VoteType.PREVOTE, VoteType.PRECOMMIT):
            vote = Vote(CHAIN, 1, 0, vtype, block.hash, DIDS[i]).signed(KEYS[i])
            actions = engine.handle(VoteReceived(vote))
    assert engine.step is Step.COMMITTED
    assert any(isinstance(a, Commit) and a.block.hash == block.hash for a in actions)
    assert asked == [block.hash]  # never asked again: not part of the lock or the decision


def test_a_re_proposal_with_a_quorum_of_prevotes_is_not_judged_by_the_clock() -> None:
    vset = _vset([1] * 4)
    engine = Engine(chain=CHAIN, me=DIDS[3], app=_App(), timely=lambda block: False)
    engine.handle(StartHeight(1, vset))
    block = make_block(1, CHAIN, 4, proposer(vset, 1, 0), vset)
    for i in range(3):  # a quorum prevoted it in round 0 (we missed that round)
        engine.handle(
            VoteReceived(Vote(CHAIN, 1, 0, VoteType.PREVOTE, block.hash, DIDS[i]).signed(KEYS[i]))
        )
    engine.handle(TimeoutFired(TimeoutKind.PROPOSE, 1, 0))
    engine.handle(TimeoutFired(TimeoutKind.PREVOTE, 1, 0))
    for i in range(3):
        engine.handle(
            VoteReceived(Vote(CHAIN, 1, 0, VoteType.PRECOMMIT, NIL, DIDS[i]).signed(KEYS[i]))
        )
    actions = engine.handle(TimeoutFired(TimeoutKind.PRECOMMIT, 1, 0))
    assert engine.round == 1
    author = DIDS.index(proposer(vset, 1, 1))
    again = Proposal(CHAIN, 1, 1, block, 0, DIDS[author]).signed(KEYS[author])
    actions = engine.handle(ProposalReceived(again))
    assert _prevotes(actions) == [block.hash]


def _proof_of(block: Block, vset: ValidatorSet, signers: list[int]) -> tuple[Proposal, list[Vote]]:
    lead = DIDS.index(proposer(vset, 1, 0))
    p = Proposal(CHAIN, 1, 0, block, -1, DIDS[lead]).signed(KEYS[lead])
    votes = [
        Vote(CHAIN, 1, 0, VoteType.PREVOTE, block.hash, DIDS[i]).signed(KEYS[i]) for i in signers
    ]
    return p, votes


def test_the_lock_state_carries_its_proof_through_the_vote_guard(tmp_path: Path) -> None:
    """The engine's state names the proposal and the prevotes that made validValue valid, and
    the vote guard keeps them with the lock (issue 16, item 10)."""
    vset = _vset([1] * 4)
    block = make_block(1, CHAIN, 4, DIDS[0], vset)
    p, votes = _proof_of(block, vset, [0, 1, 2])
    engine = Engine(chain=CHAIN, me=DIDS[3], app=_App())
    engine.handle(StartHeight(1, vset))
    engine.handle(ProposalReceived(p))
    actions: list = []
    for vote in votes:
        actions += engine.handle(VoteReceived(vote))
    precommit = next(a for a in actions if isinstance(a, BroadcastVote))
    assert precommit.vote.type is VoteType.PRECOMMIT and precommit.vote.block == block.hash
    state = precommit.state
    assert state.proof is not None and state.proof_messages(CHAIN)[0] == p
    assert {m for m in state.proof_messages(CHAIN)[1:]} >= set(votes)
    with VoteGuard(tmp_path / "vote_guard.sqlite") as guard:
        guard.sign_vote(precommit.vote, KEYS[3], state)
    with VoteGuard(tmp_path / "vote_guard.sqlite") as guard:
        assert guard.state(CHAIN) == state


def test_a_restored_engine_readmits_its_proof_and_relays_it() -> None:
    vset = _vset([1] * 4)
    block = make_block(1, CHAIN, 4, DIDS[0], vset)
    p, votes = _proof_of(block, vset, [0, 1, 2])
    proof = LockProof.from_messages(p, votes)
    state = EngineState(1, 2, Step.PROPOSE, 0, block, 0, block, proof)
    engine = Engine(chain=CHAIN, me=DIDS[3], app=_App(), restored=state)
    engine.handle(StartHeight(1, vset))
    assert engine.votes.quorum_for(0, VoteType.PREVOTE, block.hash)
    assert set(engine.relay()) == {p, *votes}


def test_a_restored_proof_is_checked_like_received_messages() -> None:
    """Forged signatures and strangers in the guard file count for nothing."""
    vset = _vset([1] * 4)
    block = make_block(1, CHAIN, 4, DIDS[0], vset)
    p, votes = _proof_of(block, vset, [0, 1, 5])  # 5 is not a validator
    forged = Vote(CHAIN, 1, 0, VoteType.PREVOTE, block.hash, DIDS[2], votes[0].signature)
    proof = LockProof.from_messages(p, [*votes, forged])
    state = EngineState(1, 1, Step.PROPOSE, 0, block, 0, block, proof)
    engine = Engine(chain=CHAIN, me=DIDS[3], app=_App(), restored=state)
    engine.handle(StartHeight(1, vset))
    assert engine.votes.get(0, VoteType.PREVOTE).power == 2
    assert not engine.votes.quorum_for(0, VoteType.PREVOTE, block.hash)


def test_a_vote_guard_state_from_before_the_proof_still_loads() -> None:
    vset = _vset([1] * 4)
    block = make_block(1, CHAIN, 4, DIDS[0], vset)
    state = EngineState(1, 0, Step.PRECOMMIT, 0, block, 0, block)
    old = state.to_dict()
    del old["proof"]
    assert EngineState.from_dict(old) == state and state.proof_messages(CHAIN) == []
    for bad in ({**old, "step": 9}, {**old, "proof": {"junk": 1}}, {**old, "extra": 1}):
        with pytest.raises(EncodingError):
            EngineState.from_dict(bad)


@given(
    st.lists(st.sampled_from(range(8)), max_size=8),
    st.integers(min_value=-1, max_value=2**53 - 1),
)
@settings(max_examples=50, deadline=None)
def test_lock_proof_round_trips(signers: list[int], valid_round: int) -> None:
    vset = _vset([1] * 8)
    block = make_block(1, CHAIN, 4, DIDS[0], vset)
    p, votes = _proof_of(block, vset, signers)
    proof = LockProof(
        p.proposer, valid_round, p.signature, LockProof.from_messages(p, votes).prevotes
    )
    assert LockProof.from_dict(proof.to_dict()) == proof
    assert len(proof.prevotes) == len(set(signers))


@pytest.mark.parametrize(
    "powers",
    [
        ((0, 0),),  # all zero power: proposer() divided by zero
        ((0, 0), (1, 0), (2, 0), (3, 0)),
        ((0, 1), (1, -1)),  # a total of zero through a negative power
        ((0, 1), (0, 1), (1, 1)),  # one did twice
    ],
)
def test_a_validator_set_without_positive_distinct_powers_is_refused(
    powers: tuple[tuple[int, int], ...],
) -> None:
    """Built by hand (``from_mapping`` drops zero powers), such a set must not start a height:
    an exception out of ``handle`` would stop the node's consensus loop (issue 16, item 10)."""
    vset = ValidatorSet(tuple((DIDS[i], p) for i, p in powers))
    engine = Engine(chain=CHAIN, me=DIDS[0], app=_App())
    assert engine.handle(StartHeight(1, vset)) == []
    assert engine.height == -1 and engine.validators is None
    vote = Vote(CHAIN, 1, 0, VoteType.PREVOTE, NIL, DIDS[1]).signed(KEYS[1])
    assert engine.handle(VoteReceived(vote)) == []
    assert engine.handle(StartHeight(1, _vset([1] * 4)))  # a sound set still starts


def test_proposer_of_a_set_without_power_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="power"):
        proposer(ValidatorSet(((DIDS[0], 0),)), 1, 0)


def test_a_commit_whose_certificate_repeats_a_signer_is_refused() -> None:
    """One precommit listed twice must not count twice: 2 of 4 is no quorum."""
    vset = _vset([1] * 4)
    engine = _engine()
    block = make_block(1, CHAIN, 2, DIDS[0], vset)
    sigs = {
        i: Vote(CHAIN, 1, 0, VoteType.PRECOMMIT, block.hash, DIDS[i]).signed(KEYS[i]).signature
        for i in range(4)
    }
    doubled = CommitCertificate(1, 0, block.hash, ((DIDS[0], sigs[0]),) * 2 + ((DIDS[1], sigs[1]),))
    assert not [
        a
        for a in engine.handle(CommitReceived(replace(block, commit=doubled)))
        if isinstance(a, Commit)
    ]
    assert engine.step != Step.COMMITTED
    good = CommitCertificate(1, 0, block.hash, tuple((DIDS[i], sigs[i]) for i in range(3)))
    commits = [
        a
        for a in engine.handle(CommitReceived(replace(block, commit=good)))
        if isinstance(a, Commit)
    ]
    assert len(commits) == 1


@given(
    st.lists(
        st.tuples(st.integers(min_value=0, max_value=7), st.integers(min_value=-3, max_value=5)),
        max_size=6,
    )
)
@settings(max_examples=200, deadline=None)
def test_any_validator_set_gets_a_verdict_never_an_exception(
    powers: list[tuple[int, int]],
) -> None:
    """Any set the edge hands over either starts the height or is refused, without raising."""
    vset = ValidatorSet(tuple((DIDS[i], p) for i, p in powers))
    engine = Engine(chain=CHAIN, me=DIDS[0], app=_App())
    actions = engine.handle(StartHeight(1, vset))
    dids = [d for d, _ in vset.powers]
    sound = bool(dids) and len(set(dids)) == len(dids) and all(p > 0 for _, p in vset.powers)
    assert (engine.height == 1) == sound == bool(actions)


def test_the_next_height_buffer_keeps_only_signed_messages_and_a_share_per_signer() -> None:
    """A validator's equivocations, or votes forged in the others' names, used to fill the
    4,096 places a lagging node needs for the next height (issue 16: bounded per signer)."""
    from bcfl_cli.consensus.engine import MAX_BUFFERED_PER_SIGNER

    engine = _engine()
    forged = Vote(CHAIN, 2, 0, VoteType.PREVOTE, NIL, DIDS[1], "00" * 64)
    engine.handle(VoteReceived(forged))
    assert engine._buffer == []
    for r in range(MAX_BUFFERED_PER_SIGNER + 20):  # one signer, valid signatures
        vote = Vote(CHAIN, 2, r, VoteType.PREVOTE, NIL, DIDS[2]).signed(KEYS[2])
        engine.handle(VoteReceived(vote))
    assert len(engine._buffer) == MAX_BUFFERED_PER_SIGNER
    honest = Vote(CHAIN, 2, 0, VoteType.PREVOTE, NIL, DIDS[0]).signed(KEYS[0])
    engine.handle(VoteReceived(honest))
    assert len(engine._buffer) == MAX_BUFFERED_PER_SIGNER + 1  # another signer still gets in


def test_signers_outside_the_validator_set_cannot_fill_the_next_height_buffer() -> None:
    """The share per signer was taken per *key*: a validator relaying votes signed by keys it
    mints (valid signatures, no power) filled the 4,096 places 64 at a time, and the next
    height's honest messages were dropped. Signers outside the set in force share one share."""
    import hashlib

    import nacl.signing

    from bcfl_cli.consensus.engine import MAX_BUFFERED, MAX_BUFFERED_PER_SIGNER
    from bcfl_cli.protocol.crypto import did_from_public_key

    engine = _engine()
    minted = [
        nacl.signing.SigningKey(hashlib.sha256(b"minted %d" % i).digest())
        for i in range(MAX_BUFFERED // MAX_BUFFERED_PER_SIGNER + 1)
    ]
    for k in minted:
        signer = did_from_public_key(bytes(k.verify_key))
        for r in range(MAX_BUFFERED_PER_SIGNER):
            engine.handle(VoteReceived(Vote(CHAIN, 2, r, VoteType.PREVOTE, NIL, signer).signed(k)))
    assert len(engine._buffer) <= MAX_BUFFERED_PER_SIGNER
    for i in range(3):  # every validator of the set in force still gets its messages in
        vote = Vote(CHAIN, 2, 0, VoteType.PREVOTE, NIL, DIDS[i]).signed(KEYS[i])
        engine.handle(VoteReceived(vote))
    assert (
        sum(isinstance(e, VoteReceived) and e.vote.validator in DIDS[:3] for e in engine._buffer)
        == 3
    )
