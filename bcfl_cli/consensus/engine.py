"""Tendermint consensus as a pure, deterministic state machine.

Buchman, Kwon, Milosevic, "The latest gossip on BFT consensus" (arXiv:1807.04938), Algorithm 1.
Comments ``# L22-27`` name the lines of Algorithm 1 that a piece of code implements:

    L11-21  StartRound: the proposer proposes validValue or getValue(); others set timeoutPropose
    L22-27  upon PROPOSAL(h, r, v, -1): prevote v if valid and not locked on something else
    L28-33  upon PROPOSAL(h, r, v, vr) + 2f+1 PREVOTE(h, vr, id(v)): prevote v if lock allows
    L34-35  upon 2f+1 PREVOTE(h, r, *) first time: schedule timeoutPrevote
    L36-43  upon PROPOSAL(h, r, v) + 2f+1 PREVOTE(h, r, id(v)), valid(v): lock, precommit v
    L44-46  upon 2f+1 PREVOTE(h, r, nil): precommit nil
    L47-48  upon 2f+1 PRECOMMIT(h, r, *) first time: schedule timeoutPrecommit
    L49-54  upon PROPOSAL(h, r, v) + 2f+1 PRECOMMIT(h, r, id(v)), valid(v): decide v
    L55-56  upon f+1 messages of any round > round_p: StartRound(that round)
    L57-67  OnTimeoutPropose / OnTimeoutPrevote / OnTimeoutPrecommit

``Engine.handle(event) -> list[Action]`` touches nothing but the engine's own fields: no I/O,
no clock, no threads, no randomness. The node (the "edge") turns actions into effects:

* ``BroadcastVote`` / ``BroadcastProposal``: record in the vote guard together with
  ``action.state`` (durably), then sign, send to every peer, and feed the signed message back
  to ``handle`` (the engine counts its own vote like anyone else's).
* ``ScheduleTimeout``: call ``handle(TimeoutFired(...))`` after ``duration_ms``.
* ``Commit``: append the block (it carries its commit certificate), apply it, then call
  ``handle(StartHeight(h + 1, next validator set))``: the set in force at h+1 is known only
  after applying block h, which is why the engine waits instead of doing L52-54 by itself.
* ``Evidence``: submit a ``misbehaviour`` transaction with ``evidence.to_body()``.

The engine verifies the signature of every proposal and vote it receives (each once), so the
edge need not. The application is two injected deterministic callbacks: ``propose(h, r)``
(the paper's getValue()) and ``validate(block)`` (valid(v)), which may answer UNKNOWN while a
blob is missing: the engine then waits (for ``Recheck`` or the propose timeout, which
prevotes nil) instead of voting on a block it could not check. An optional third,
``timely(block)``, is the prevote rule on the block time (PROTOCOL.md §6.2, the edge reads its
clock): asked only of a fresh proposal (validRound -1) before the engine prevotes for it, as in
Tendermint's proposer-based timestamps, never at the lock (L36) or the decision (L49), so a
validator whose clock is slow still decides a block that a quorum committed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import lru_cache
from typing import Protocol

from bcfl_cli.consensus.messages import (
    Action,
    BroadcastProposal,
    BroadcastVote,
    Commit,
    CommitReceived,
    EngineState,
    Event,
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
)
from bcfl_cli.consensus.proposer import proposer
from bcfl_cli.consensus.votes import HeightVotes, more_than_two_thirds
from bcfl_cli.protocol.block import (
    NIL,
    Block,
    BlockHeader,
    CommitCertificate,
    ValidatorSet,
    Vote,
    VoteType,
)
from bcfl_cli.protocol.crypto import Domain, verify_by_did

#: Votes for rounds further ahead than this are dropped: bounds what a Byzantine validator can
#: make us store and verify, while still letting a lagging node see f+1 of a later round.
MAX_ROUNDS_AHEAD = 1_000
#: Distinct proposals kept per round (an equivocating proposer may send many).
MAX_PROPOSALS_PER_ROUND = 4
#: Messages for the next height, kept until it starts (a fast peer may already be there).
MAX_BUFFERED = 4_096
#: ... and at most this many from one signer, each with a valid signature: one validator (or
#: one forging the others' names) cannot fill the buffer that a lagging node needs.
MAX_BUFFERED_PER_SIGNER = 64
#: The one share that every signer outside the validator set in force counts against: a key
#: costs nothing to mint, so a share per key would let one validator relaying messages signed
#: by keys of its own making fill the buffer (and a node's pull log) 64 places at a time.
OUTSIDERS = ""

#: Verified signatures remembered (then forgotten at once: a Byzantine validator can sign junk).
MAX_SIGNATURE_CACHE = 1 << 16

#: Shared set of (did, domain, digest, signature) already verified: a fact, valid for anyone.
SignatureCache = set[tuple[str, bytes, str, str]]


@lru_cache(maxsize=1 << 16)
def vote_digest(vote: Vote) -> str:
    """Canonical hashing dominates the cost of a vote; every copy of a vote hashes alike."""
    return vote.hash


@lru_cache(maxsize=1 << 12)
def header_hash(header: BlockHeader) -> str:
    return header.hash


def sound_validator_set(validators: ValidatorSet) -> bool:
    """Distinct dids, each with a positive integer power.

    ``ValidatorSet.from_mapping`` builds only such sets, but the engine is a boundary: a set
    built otherwise (all powers zero, a did twice) made ``proposer()`` divide by zero or a
    validator count twice, and an exception out of ``handle`` stops the node's consensus.
    """
    dids = [did for did, _ in validators.powers]
    return (
        bool(dids)
        and len(set(dids)) == len(dids)
        and all(type(power) is int and power > 0 for _, power in validators.powers)
    )


class Application(Protocol):
    def propose(self, height: int, round: int) -> Block:
        """getValue() of the paper: a new block for (height, round), without commit."""
        ...

    def validate(self, block: Block) -> Validity:
        """valid(v): full block validation against this member's own state at the height."""
        ...


class Engine:
    """One validator's (or observer's) view of consensus for one height at a time."""

    def __init__(
        self,
        *,
        chain: str,
        me: str,
        app: Application,
        timeouts: TimeoutConfig | None = None,
        restored: EngineState | None = None,
        signature_cache: SignatureCache | None = None,
        timely: Callable[[Block], bool] | None = None,
    ) -> None:
        self.chain = chain
        self.me = me
        self.app = app
        self._timely = timely
        self.timeouts = timeouts or TimeoutConfig()
        self._restored = restored
        self._sig_cache: SignatureCache = signature_cache if signature_cache is not None else set()
        # Algorithm 1, lines 2-9 (decision_p is the ledger, kept by the edge).
        self.height = -1
        self.round = 0
        self.step = Step.COMMITTED
        self.locked_round = -1
        self.locked_block: Block | None = None
        self.valid_round = -1
        self.valid_block: Block | None = None
        # The message log of the current height.
        self.validators: ValidatorSet | None = None
        self.votes = HeightVotes(total=0)
        self.proposals: dict[int, dict[str, Proposal]] = {}
        self._fired: set[tuple[str, int]] = set()
        self._validity: dict[str, Validity] = {}
        self._rejected: SignatureCache = set()
        self._evidence: set[tuple[str, int, VoteType]] = set()
        self._buffer: list[Event] = []
        self._buffered_by: dict[str, int] = {}

    # --- public ---------------------------------------------------------------------------
    @property
    def state(self) -> EngineState:
        proof = None
        messages = self.proof_of_lock()
        if messages and isinstance(messages[0], Proposal):
            votes = [m for m in messages[1:] if isinstance(m, Vote)]
            proof = LockProof.from_messages(messages[0], votes)
        return EngineState(
            self.height,
            self.round,
            self.step,
            self.locked_round,
            self.locked_block,
            self.valid_round,
            self.valid_block,
            proof,
        )

    def proof_of_lock(self) -> list[Proposal | Vote]:
        """The proposal of validValue and the 2f+1 PREVOTEs that made it valid at validRound.

        A peer that missed some of them cannot accept the re-proposal of validValue (L28) and
        the height may never end; the paper's gossip assumption (every message a correct
        process receives reaches all) is met by the edge re-sending these with its own.
        """
        if self.valid_block is None or self.valid_round < 0:
            return []
        block_hash = header_hash(self.valid_block.header)
        proposal = self._proposal_for(self.valid_round, block_hash)
        prevotes = self.votes.rounds.get((self.valid_round, VoteType.PREVOTE))
        messages: list[Proposal | Vote] = [proposal] if proposal is not None else []
        messages.extend(prevotes.for_block(block_hash) if prevotes is not None else [])
        return messages

    def relay(self) -> list[Proposal | Vote]:
        """Others' messages the edge should re-send with its own: the proof of lock, and the
        PRECOMMITs of the previous round that took us to this one (L47-48, L65-67).

        A peer still in that round may lack some of them (a Byzantine sender may have reached
        only us) and then waits forever for 2f+1 precommits; relaying them is the paper's
        gossip assumption, in the small.
        """
        messages = self.proof_of_lock()
        if self.round > 0:
            precommits = self.votes.rounds.get((self.round - 1, VoteType.PRECOMMIT))
            if precommits is not None:
                messages.extend(v for m in precommits.by_validator.values() for v in m.values())
        return messages

    def handle(self, event: Event) -> list[Action]:
        out: list[Action] = []
        if isinstance(event, StartHeight):
            self._start_height(event, out)
        elif isinstance(event, ProposalReceived):
            self._on_proposal(event.proposal)
        elif isinstance(event, VoteReceived):
            self._on_vote(event.vote, out)
        elif isinstance(event, TimeoutFired):
            self._on_timeout(event, out)
        elif isinstance(event, CommitReceived):
            self._on_commit(event.block, out)
        elif isinstance(event, Recheck):
            self._validity = {k: v for k, v in self._validity.items() if v is not Validity.UNKNOWN}
        self._run_rules(out)
        return out

    # --- events -----------------------------------------------------------------------------
    def _start_height(self, event: StartHeight, out: list[Action]) -> None:
        if event.height <= self.height or not sound_validator_set(event.validators):
            return
        self.height = event.height
        self.validators = event.validators
        self.votes = HeightVotes(total=event.validators.total_power)
        self.proposals = {}
        self._fired = set()
        self._validity = {}
        self._rejected = set()
        self._evidence = set()
        restored, self._restored = self._restored, None
        if restored is not None and restored.height == event.height:
            # A restarted validator resumes where it last signed, still locked (L6-9 persisted).
            self.round, self.step = restored.round, restored.step
            self.locked_round, self.locked_block = restored.locked_round, restored.locked_block
            self.valid_round, self.valid_block = restored.valid_round, restored.valid_block
            kind = {
                Step.PROPOSE: TimeoutKind.PROPOSE,
                Step.PREVOTE: TimeoutKind.PREVOTE,
            }.get(self.step, TimeoutKind.PRECOMMIT)
            self._schedule(kind, out)
            # The proof of validValue, persisted with the lock: back into the message log
            # (checked like anything received) so that relay() re-sends it. Without it, peers
            # that missed a prevote only we saw could never accept our re-proposal (L28).
            for message in restored.proof_messages(self.chain):
                if isinstance(message, Proposal):
                    self._on_proposal(message)
                else:
                    self._on_vote(message, out)
        else:
            # L53: reset lockedRound, lockedValue, validRound, validValue for the new height.
            self.locked_round, self.locked_block = -1, None
            self.valid_round, self.valid_block = -1, None
            self._start_round(0, out)
        buffered, self._buffer = self._buffer, []
        self._buffered_by = {}
        for item in buffered:
            if isinstance(item, ProposalReceived):
                self._on_proposal(item.proposal)
            elif isinstance(item, VoteReceived):
                self._on_vote(item.vote, out)

    def _start_round(self, round: int, out: list[Action]) -> None:
        """L11-21 StartRound(round)."""
        assert self.validators is not None
        self.round = round  # L12
        self.step = Step.PROPOSE  # L13
        if proposer(self.validators, self.height, round) == self.me:  # L14
            if self.valid_block is not None:  # L15-16
                block, valid_round = self.valid_block, self.valid_round
            else:  # L17-18
                block, valid_round = self.app.propose(self.height, round), -1
            proposal = Proposal(self.chain, self.height, round, block, valid_round, self.me)
            out.append(BroadcastProposal(proposal, self.state))  # L19
        # L21. The paper sets this timer only on non-proposers; we set it on all, so that a
        # proposer whose own proposal never comes back (lost, refused by the vote guard after
        # a restart) still prevotes nil. OnTimeoutPropose acts only in the propose step.
        self._schedule(TimeoutKind.PROPOSE, out)

    def _accepts(
        self, chain: str, height: int, round: int, event: ProposalReceived | VoteReceived
    ) -> bool:
        """Common gate: our chain, this height (the next one is buffered), a sane round."""
        if chain != self.chain:
            return False
        if height == self.height + 1 or (self.validators is None and height > self.height):
            message: Proposal | Vote = (
                event.proposal if isinstance(event, ProposalReceived) else event.vote
            )
            signer = message.proposer if isinstance(message, Proposal) else message.validator
            share = signer_share(signer, self.validators)
            count = self._buffered_by.get(share, 0)
            if (
                len(self._buffer) < MAX_BUFFERED
                and count < MAX_BUFFERED_PER_SIGNER
                and self.authentic(message)
            ):
                self._buffer.append(event)
                self._buffered_by[share] = count + 1
            return False
        return height == self.height and round <= self.round + MAX_ROUNDS_AHEAD

    def _on_proposal(self, p: Proposal) -> None:
        if not self._accepts(p.chain, p.height, p.round, ProposalReceived(p)):
            return
        assert self.validators is not None
        if not -1 <= p.valid_round < p.round:
            return
        if p.proposer != proposer(self.validators, self.height, p.round):
            return  # "from proposer(h_p, round_p)"
        if p.block.height != self.height or p.block.commit is not None:
            return
        in_round = self.proposals.setdefault(p.round, {})
        if p.hash in in_round or len(in_round) >= MAX_PROPOSALS_PER_ROUND:
            return
        if not self._signature_ok(p.proposer, Domain.PROPOSAL, p.hash, p.signature):
            return
        in_round[p.hash] = p
        self.votes.note_sender(p.round, p.proposer, self.validators.power_of(p.proposer))

    def _on_vote(self, vote: Vote, out: list[Action]) -> None:
        if not self._accepts(vote.chain, vote.height, vote.round, VoteReceived(vote)):
            return
        assert self.validators is not None
        power = self.validators.power_of(vote.validator)
        if power == 0 or self.votes.seen(vote):
            return
        if not self._signature_ok(vote.validator, Domain.VOTE, vote_digest(vote), vote.signature):
            return
        admissible = vote.block == NIL or self._proposal_for(vote.round, vote.block) is not None
        earlier = self.votes.get(vote.round, vote.type).add(vote, power, admissible=admissible)
        if earlier is not None:
            key = (vote.validator, vote.round, vote.type)
            if key not in self._evidence:
                self._evidence.add(key)
                out.append(Evidence(earlier, vote))
        self.votes.note_sender(vote.round, vote.validator, power)

    def _on_timeout(self, event: TimeoutFired, out: list[Action]) -> None:
        if event.height != self.height or event.round != self.round:
            return
        if event.kind is TimeoutKind.PROPOSE and self.step == Step.PROPOSE:  # L57-60
            self.step = Step.PREVOTE
            self._vote(VoteType.PREVOTE, NIL, out)
        elif event.kind is TimeoutKind.PREVOTE and self.step == Step.PREVOTE:  # L61-64
            self.step = Step.PRECOMMIT
            self._vote(VoteType.PRECOMMIT, NIL, out)
        elif event.kind is TimeoutKind.PRECOMMIT and self.step != Step.COMMITTED:  # L65-67
            self._start_round(self.round + 1, out)

    def _on_commit(self, block: Block, out: list[Action]) -> None:
        """A decided block fetched from a peer: its certificate replaces our own L49 quorum."""
        cert = block.commit
        if self.validators is None or self.step == Step.COMMITTED or cert is None:
            return
        if block.height != self.height or cert.height != self.height:
            return
        signers = [did for did, _ in cert.signatures]
        if len(set(signers)) != len(signers):
            return  # one precommit listed twice would count its power twice
        if cert.block != header_hash(block.header):
            return
        if self._valid(replace(block, commit=None)) is not Validity.VALID:
            return
        if more_than_two_thirds(cert.signed_power(self.chain, self.validators), self.votes.total):
            self._decide(block, cert, out)

    # --- upon rules -------------------------------------------------------------------------
    def _run_rules(self, out: list[Action]) -> None:
        """Fire enabled rules until none is: each rule is atomic, as in the paper."""
        while self.validators is not None and self.step != Step.COMMITTED:
            if self._upon_decision(out):  # L49-54
                return
            round_skip = self.votes.skip_round(self.round)  # L55-56
            if round_skip is not None:
                self._start_round(round_skip, out)
                continue
            if self.step == Step.PROPOSE and self._upon_proposal(out):  # L22-33
                continue
            self._upon_any_prevotes(out)  # L34-35
            if self._upon_prevote_quorum(out):  # L36-43
                continue
            if self.step == Step.PREVOTE and self.votes.quorum_for(
                self.round, VoteType.PREVOTE, NIL
            ):  # L44-46
                self.step = Step.PRECOMMIT
                self._vote(VoteType.PRECOMMIT, NIL, out)
                continue
            if self._first_time("precommit-any") and self.votes.quorum_any(
                self.round, VoteType.PRECOMMIT
            ):  # L47-48
                self._fired.add(("precommit-any", self.round))
                self._schedule(TimeoutKind.PRECOMMIT, out)
            return

    def _upon_proposal(self, out: list[Action]) -> bool:
        for p in self.proposals.get(self.round, {}).values():
            locked = self.locked_block
            locked_on_v = locked is not None and header_hash(locked.header) == p.block_hash
            if p.valid_round == -1:  # L22
                lock_allows = self.locked_round == -1 or locked_on_v  # L23
            elif self.votes.quorum_for(p.valid_round, VoteType.PREVOTE, p.block_hash):  # L28
                lock_allows = self.locked_round <= p.valid_round or locked_on_v  # L29
            else:
                continue
            choice = NIL  # L26, L32
            if lock_allows and self._time_allows(p):  # a block dated past our clock: L26
                validity = self._valid(p.block)
                if validity is Validity.UNKNOWN:
                    continue  # wait for the blob (Recheck) or for timeoutPropose (L57)
                if validity is Validity.VALID:
                    choice = p.block_hash  # L24, L30
            self.step = Step.PREVOTE  # L27, L33
            self._vote(VoteType.PREVOTE, choice, out)
            return True
        return False

    def _time_allows(self, p: Proposal) -> bool:
        """The prevote rule on the block time, for a fresh proposal only: a re-proposal
        (validRound >= 0) carries a block that a quorum prevoted in that round, each after
        judging its time then."""
        return p.valid_round != -1 or self._timely is None or self._timely(p.block)

    def _upon_any_prevotes(self, out: list[Action]) -> None:
        if (
            self.step == Step.PREVOTE
            and self._first_time("prevote-any")
            and self.votes.quorum_any(self.round, VoteType.PREVOTE)
        ):  # L34-35
            self._fired.add(("prevote-any", self.round))
            self._schedule(TimeoutKind.PREVOTE, out)

    def _upon_prevote_quorum(self, out: list[Action]) -> bool:
        if self.step < Step.PREVOTE or not self._first_time("lock"):
            return False
        prevotes = self.votes.rounds.get((self.round, VoteType.PREVOTE))
        if prevotes is None:
            return False
        for block_hash, power in prevotes.power_by_block.items():
            if block_hash == NIL or not more_than_two_thirds(power, self.votes.total):
                continue
            p = self._proposal_for(self.round, block_hash)
            if p is None or self._valid(p.block) is not Validity.VALID:  # L36
                continue
            self._fired.add(("lock", self.round))
            self.valid_block, self.valid_round = p.block, self.round  # L42-43
            if self.step == Step.PREVOTE:  # L37
                self.locked_block, self.locked_round = p.block, self.round  # L38-39
                self.step = Step.PRECOMMIT  # L41
                self._vote(VoteType.PRECOMMIT, block_hash, out)  # L40
            return True
        return False

    def _upon_decision(self, out: list[Action]) -> bool:
        for (round, vtype), votes in self.votes.rounds.items():
            if vtype is not VoteType.PRECOMMIT:
                continue
            for block_hash, power in votes.power_by_block.items():
                if block_hash == NIL or not more_than_two_thirds(power, self.votes.total):
                    continue
                p = self._proposal_for(round, block_hash)  # L49
                if p is None or self._valid(p.block) is not Validity.VALID:  # L50
                    continue
                cert = CommitCertificate.from_votes(votes.for_block(block_hash))
                self._decide(p.block, cert, out)
                return True
        return False

    def _decide(self, block: Block, cert: CommitCertificate, out: list[Action]) -> None:
        """L51: decision_p[h_p] = v. L52-54 wait for StartHeight from the edge."""
        out.append(Commit(replace(block, commit=cert), cert, cert.round))
        self.step = Step.COMMITTED

    # --- helpers ----------------------------------------------------------------------------
    def _first_time(self, rule: str) -> bool:
        return (rule, self.round) not in self._fired

    def _proposal_for(self, round: int, block_hash: str) -> Proposal | None:
        for p in self.proposals.get(round, {}).values():
            if p.block_hash == block_hash:
                return p
        return None

    def _valid(self, block: Block) -> Validity:
        key = header_hash(block.header)
        known = self._validity.get(key)
        if known is None:
            known = self.app.validate(block)
            self._validity[key] = known
        return known

    def _vote(self, vtype: VoteType, block: str, out: list[Action]) -> None:
        assert self.validators is not None
        if self.me not in self.validators:
            return  # an observer follows consensus but never votes
        vote = Vote(self.chain, self.height, self.round, vtype, block, self.me)
        out.append(BroadcastVote(vote, self.state))

    def _schedule(self, kind: TimeoutKind, out: list[Action]) -> None:
        duration = self.timeouts.duration(kind, self.round)
        out.append(ScheduleTimeout(kind, self.height, self.round, duration))

    def authentic(self, message: Proposal | Vote) -> bool:
        """Whether ``message`` carries its signer's valid signature (cached: the engine's own
        check of the same message later costs nothing). The node asks it before it keeps a
        message for peers that pull, so that forged messages fill no one's share."""
        if isinstance(message, Proposal):
            return self._signature_ok(
                message.proposer, Domain.PROPOSAL, message.hash, message.signature
            )
        return self._signature_ok(
            message.validator, Domain.VOTE, vote_digest(message), message.signature
        )

    def _signature_ok(self, did: str, domain: Domain, digest: str, signature: str) -> bool:
        key = (did, domain.value, digest, signature)
        if key in self._sig_cache:
            return True
        if key in self._rejected:
            return False
        if verify_by_did(did, domain, digest, signature):
            if len(self._sig_cache) >= MAX_SIGNATURE_CACHE:
                self._sig_cache.clear()
            self._sig_cache.add(key)
            return True
        if len(self._rejected) < MAX_SIGNATURE_CACHE:
            self._rejected.add(key)
        return False


def signer_share(signer: str, validators: ValidatorSet | None) -> str:
    """The share a message from ``signer`` counts against where messages are kept per signer:
    its own while it is in ``validators`` (the set in force; None: not known yet), else the
    one ``OUTSIDERS`` share. A validator of the next height not yet in force gets its place
    there, or, past it, by the re-sends and pulls every node makes after 3 s without
    progress."""
    if validators is None or signer in validators:
        return signer
    return OUTSIDERS
