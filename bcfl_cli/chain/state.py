"""The application state of a chain and the rules that move it (docs/PROTOCOL.md §6).

A :class:`ChainState` is everything the rules need to judge the next block: members and their
roles, pending admissions and removals, the validator set in force at the next height, the
training round, and the set of transaction hashes already on the chain. It is replayed from the
genesis document alone, so every member derives the same state from the same blocks.

``apply`` returns a new state and leaves the old one usable (a proposal that never commits must
not leak into the state), and every broken rule raises one ``VerificationError`` naming the
height, the transaction and a stable code, with what was expected and what was found.

Every collection that grows with the chain (members, pending join requests and their names,
the expiry index, pending removals, expired requests, offences, transaction hashes) is a
persistent hash trie (``rpds``): the new state shares all but O(log n) nodes with the old one, so
applying a transaction costs the same with ten pending join requests or a million. Copying
whole dicts and sets per change made a block of 250 joins take 30 s with 345k pending
(issue 16); ``bench/join_spam.py`` measures it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, assert_never

from rpds import HashTrieMap, HashTrieSet

from bcfl_cli.chain.checks import AppChecks
from bcfl_cli.chain.config import GenesisConfig, parse_document
from bcfl_cli.errors import BcflError, EncodingError, VerificationError
from bcfl_cli.protocol.block import (
    MAX_TXS_PER_BLOCK,
    Block,
    BlockHeader,
    CommitCertificate,
    ValidatorSet,
    Vote,
)
from bcfl_cli.protocol.encoding import MAX_SAFE_INT, hash_object
from bcfl_cli.protocol.merkle import merkle_root
from bcfl_cli.protocol.spec import TrainingPlan
from bcfl_cli.protocol.tx import MAX_TX_BYTES, Transaction, TxKind, tx_signature_valid
from bcfl_cli.protocol.txbodies import (
    AggregateBody,
    ApproveMemberBody,
    JoinRequestBody,
    MisbehaviourBody,
    OpenRoundBody,
    RemoveMemberBody,
    TlsCertificateBody,
    TlsModeBody,
    TxBody,
    UpdateBody,
    ValidationBody,
)

#: Upper bound on the canonical bytes of all transactions of one block.
MAX_BLOCK_TX_BYTES = 4 * 1024 * 1024

#: The most a block's time may pass its parent's (§6.2, a chain rule verify-chain re-checks).
#: One day: a chain idle for a week catches up with the clock in seven blocks, while a block
#: time far in the future (2^53-1 ms, after which no block could follow) is refused at once.
MAX_BLOCK_TIME_STEP_MS = 24 * 60 * 60 * 1000
#: How far past its own clock a validator accepts a proposed block's time before it prevotes
#: for it (§6.2, the prevote rule). Only an upper bound: once a block is within it, it stays
#: within it, so a block validators locked on never turns invalid for them later.
MAX_CLOCK_DRIFT_MS = 10_000
#: How far a fresh proposal's time may lag a validator's clock when the step limit does not
#: force it (§6.2 prevote rule). An idle chain makes no blocks, so a head can be hours old: a
#: proposer free to date its block just after such a head could open a round whose deadline
#: in time has passed already. Generous against slow validation (blob fetch, checks).
MAX_CLOCK_LAG_MS = 60_000

ACTIVE = "active"
REMOVED = "removed"

#: One equivocation: (offender did, height, round, vote type). The chain records each once.
Offence = tuple[str, int, int, str]

#: The transactions that move the members, and with them the validator set (§6.3).
MEMBERSHIP_KINDS = frozenset({TxKind.JOIN_REQUEST, TxKind.APPROVE_MEMBER, TxKind.REMOVE_MEMBER})


# --- state records --------------------------------------------------------------------------
@dataclass(frozen=True)
class Member:
    did: str
    name: str
    roles: tuple[str, ...]
    power: int
    status: str  # ACTIVE or REMOVED
    since: int  # height at which the member was admitted (0: founding member)
    tls: str | None = None  # fingerprint of its pinned node certificate (issue 22)

    @property
    def active(self) -> bool:
        return self.status == ACTIVE

    @property
    def is_validator(self) -> bool:
        return self.active and "validator" in self.roles and self.power > 0

    @property
    def is_trainer(self) -> bool:
        return self.active and "trainer" in self.roles


@dataclass(frozen=True)
class JoinRequest:
    tx: str  # hash of the join_request transaction
    did: str
    name: str
    roles: tuple[str, ...]
    power: int
    approvals: frozenset[str] = frozenset()
    height: int = 0  # the block that holds the request
    tls: str | None = None  # the applicant's certificate fingerprint, pinned on admission

    def expires_after(self, ttl_blocks: int) -> int:
        """The last height at which the request can still be approved."""
        return self.height + ttl_blocks


@dataclass(frozen=True)
class ExpiredRequest:
    tx: str  # hash of the join_request transaction
    expired_at: int  # the first height at which it was no longer pending


@dataclass(frozen=True)
class AcceptedUpdate:
    tx: str
    author: str
    blob: str
    blob_size: int
    num_samples: int


@dataclass(frozen=True)
class RoundState:
    """The latest round: open (collecting updates) or closed by its aggregate.

    Round 0 stands for "no round yet"; its ``model`` is the genesis initial model, so the next
    round's base is always ``model`` of the latest round.
    """

    number: int
    open: bool
    base_model: str
    model: str  # the aggregate's model once closed; the base while open
    opened_at: int = 0
    deadline_height: int = 0  # 0: the plan has no deadline in blocks
    deadline_time: int = 0  # ms of block time; 0: the plan has no deadline in seconds
    closed_at: int = 0  # height of the block whose aggregate closed it; 0 while open
    closed_time: int = 0  # that block's time (ms)
    accepted: tuple[AcceptedUpdate, ...] = ()
    submitted: frozenset[str] = frozenset()  # authors with an update (accepted or not)

    @property
    def state(self) -> str:
        return "open" if self.open else "closed"

    @property
    def accepted_hashes(self) -> list[str]:
        return sorted(u.tx for u in self.accepted)

    def with_update(
        self, accepted: tuple[AcceptedUpdate, ...], submitted: frozenset[str]
    ) -> RoundState:
        """``dataclasses.replace(self, accepted=..., submitted=...)``, built directly: once a
        validation, and ``replace`` (which walks the fields) was ~4% of verify-chain's replay.
        A test keeps both equal for every field."""
        return RoundState(
            self.number,
            self.open,
            self.base_model,
            self.model,
            self.opened_at,
            self.deadline_height,
            self.deadline_time,
            self.closed_at,
            self.closed_time,
            accepted,
            submitted,
        )

    def closed_by(self, model: str, height: int, time: int) -> RoundState:
        """``dataclasses.replace(self, open=False, model=..., closed_at=..., closed_time=...)``,
        built directly, like :meth:`with_update`."""
        return RoundState(
            self.number,
            False,
            self.base_model,
            model,
            self.opened_at,
            self.deadline_height,
            self.deadline_time,
            height,
            time,
            self.accepted,
            self.submitted,
        )


class SeenSet:
    """Transaction hashes on the chain, shared between successive states without copying.

    A persistent hash set: adding a block's k hashes costs O(k log n) and leaves the previous
    state's set intact. (The frozen base plus recent layer it replaces folded, that is copied,
    the whole set every 1,024 hashes: a block that triggered a fold cost O(n).)
    """

    def __init__(self, hashes: HashTrieSet[str] | None = None) -> None:
        self._hashes: HashTrieSet[str] = hashes if hashes is not None else HashTrieSet()

    def __contains__(self, item: object) -> bool:
        return item in self._hashes

    def __len__(self) -> int:
        return len(self._hashes)

    def __iter__(self) -> Iterator[str]:
        return iter(self._hashes)

    def with_added(self, hashes: Iterable[str]) -> SeenSet:
        added = self._hashes.update(hashes)
        return self if len(added) == len(self._hashes) else SeenSet(added)


def offence_of(body: Mapping[str, Any]) -> Offence | None:
    """The offence a ``misbehaviour`` body is about, or None if its first vote is unreadable.

    The key is taken from the first vote; a body whose votes disagree is refused by the rules
    (``bad_evidence``) anyway, so nodes may use this to skip evidence already known.
    """
    try:
        votes = body["votes"]
        vote = Vote.from_dict(votes[0])
    except (EncodingError, KeyError, IndexError, TypeError):
        return None
    return (vote.validator, vote.height, vote.round, str(vote.type))


def tx_digest(tx: Transaction) -> tuple[str, int]:
    """(hash, canonical size of the signed form) from one canonicalisation, not two.

    The signed form is ``{"sig":"<128 hex>","tx":UNSIGNED}``: 144 bytes around UNSIGNED.
    """
    return tx.digest()


def _fail(height: int, code: str, message: str, tx: str | None = None) -> VerificationError:
    where = f"block {height}" + (f", tx {tx[:16]}" if tx else "")
    return VerificationError(f"{where}: {message}", height=height, tx_hash=tx, code=code)


# --- the state ------------------------------------------------------------------------------
class ChainState:
    """Application state after the block at ``height``; treat it as immutable."""

    def __init__(
        self,
        *,
        chain_id: str,
        document: dict[str, Any],
        config: GenesisConfig,
        height: int,
        head_hash: str,
        head_time: int,
        members: Mapping[str, Member],
        pending: Mapping[str, JoinRequest],
        removals: Mapping[str, frozenset[str]],
        round: RoundState,
        seen_tx: SeenSet,
        offences: Iterable[Offence] = (),
        expired: Mapping[str, ExpiredRequest] | None = None,
        tls_mode: str | None = None,
    ) -> None:
        self.chain_id = chain_id
        self.document = document
        self.config = config
        self.height = height
        self.head_hash = head_hash
        self.head_time = head_time
        self._members: HashTrieMap[str, Member] = HashTrieMap(members)
        self._pending: HashTrieMap[str, JoinRequest] = HashTrieMap(pending)
        self._removals: HashTrieMap[str, frozenset[str]] = HashTrieMap(removals)
        self._expired: HashTrieMap[str, ExpiredRequest] = HashTrieMap(expired or {})
        # names of members (active or removed) and pending applicants -> did: one lookup where
        # every join used to rebuild the set of all names
        names = {m.name: m.did for m in self._members.values()}
        names.update((r.name, r.did) for r in self._pending.values())
        self._names: HashTrieMap[str, str] = HashTrieMap(names)
        # request height -> applicants that asked at that height: expiry touches one height a
        # block instead of scanning every pending request
        joins_at: dict[int, tuple[str, ...]] = {}
        for r in self._pending.values():
            joins_at[r.height] = (*joins_at.get(r.height, ()), r.did)
        self._joins_at: HashTrieMap[int, tuple[str, ...]] = HashTrieMap(joins_at)
        self._validators: HashTrieSet[str] = HashTrieSet(
            d for d, m in self._members.items() if m.is_validator
        )
        self._trainers: HashTrieSet[str] = HashTrieSet(
            d for d, m in self._members.items() if m.is_trainer
        )
        self.round = round
        self.seen_tx = seen_tx
        # equivocations already recorded by a misbehaviour tx
        self.offences: HashTrieSet[Offence] = HashTrieSet(offences)
        # how nodes trust certificates (issue 22): the genesis's, until tls_mode votes change it;
        # mode -> the validators that asked for it since the last change
        self.tls_mode = tls_mode
        self.tls_votes: HashTrieMap[str, frozenset[str]] = HashTrieMap()
        self._members_changed = False
        self.config_hash = hash_object(document)
        self.validator_set = self._compute_validator_set()

    # --- construction ----------------------------------------------------------------------
    @classmethod
    def genesis(
        cls, document: dict[str, Any], genesis_hash: str, *, time_ms: int = 0
    ) -> ChainState:
        """The state right after genesis, from the genesis document alone."""
        config = parse_document(document)
        members = {
            m.did: Member(m.did, m.name, m.roles, m.power, ACTIVE, 0, m.tls) for m in config.members
        }
        return cls(
            chain_id=genesis_hash,
            document=document,
            config=config,
            height=0,
            head_hash=genesis_hash,
            head_time=time_ms,
            members=members,
            pending={},
            removals={},
            round=RoundState(0, False, config.initial_model, config.initial_model),
            seen_tx=SeenSet(),
            tls_mode=config.tls_mode,
        )

    @classmethod
    def from_genesis(cls, block: Block, document: dict[str, Any]) -> ChainState:
        """The state after ``block`` once it is checked to be the genesis of ``document``."""
        state = cls.genesis(document, block.hash, time_ms=block.header.time)
        check_genesis_block(block, document, state.validator_set)
        return state

    def _copy(self) -> ChainState:
        """A shallow copy: the persistent maps are shared, and every change makes new ones."""
        new = object.__new__(ChainState)
        new.__dict__.update(self.__dict__)
        new._members_changed = False
        return new

    # --- views ---------------------------------------------------------------------------
    @property
    def members(self) -> Mapping[str, Member]:
        return self._members

    @property
    def pending(self) -> Mapping[str, JoinRequest]:
        return self._pending

    def tls_pins(self) -> dict[str, str]:
        """did -> pinned certificate fingerprint of each active member that has one (issue 22);
        O(members), read by a node once per block that changes the members."""
        return {d: m.tls for d, m in self._members.items() if m.active and m.tls is not None}

    def tls_pinned_by(self, fingerprint: str) -> str | None:
        """The active member whose pinned certificate ``fingerprint`` is, if any."""
        return next((d for d, fp in self.tls_pins().items() if fp == fingerprint), None)

    @property
    def removals(self) -> Mapping[str, frozenset[str]]:
        return self._removals

    @property
    def expired_requests(self) -> Mapping[str, ExpiredRequest]:
        """Applicants whose latest join request expired unapproved, by did; each is kept for
        ``join_request_ttl_blocks`` blocks after it expired (PROTOCOL.md §6.3)."""
        return self._expired

    @property
    def trainers(self) -> frozenset[str]:
        """Kept with the persistent set it was made from (a change makes a new set, so the
        identity check is exact): the contract asks it for every update, and building it
        anew each time was N x N frozensets a round in ``bcfl simulate`` (7% of its CPU at 100
        members)."""
        kept: tuple[HashTrieSet[str], frozenset[str]] | None = self.__dict__.get("_trainers_kept")
        if kept is None or kept[0] is not self._trainers:
            kept = (self._trainers, frozenset(self._trainers))
            self.__dict__["_trainers_kept"] = kept
        return kept[1]

    def name_taken(self, name: str) -> bool:
        """Whether a member (active or removed) or a pending applicant holds ``name``."""
        return name in self._names

    @property
    def joins_full(self) -> bool:
        """Whether ``max_pending_joins`` requests are pending: a new one would be refused."""
        return len(self._pending) >= self.config.max_pending_joins

    def round_may_close(self, height: int, time_ms: int) -> bool:
        """Whether the block at ``height`` with time ``time_ms`` may aggregate the open round
        (PROTOCOL.md §6.3).

        Enough accepted updates, or every trainer heard from (each sends one update a round,
        so waiting for the deadline after that would add nothing but blocks), or a deadline:
        the round's deadline height, or its deadline time, whichever comes first.
        """
        rnd = self.round
        if not rnd.open:
            return False
        if len(rnd.accepted) >= self.config.training.min_updates:
            return True
        if self._trainers and all(d in rnd.submitted for d in self._trainers):
            return True
        return self.round_deadline_passed(height, time_ms)

    def round_deadline_passed(self, height: int, time_ms: int) -> bool:
        """Whether the open round's deadline (in blocks or in block time) is reached by the
        block at ``height`` with time ``time_ms``."""
        rnd = self.round
        if rnd.deadline_height and height >= rnd.deadline_height:
            return True
        return bool(rnd.deadline_time) and time_ms >= rnd.deadline_time

    @property
    def plan_finished(self) -> bool:
        """Whether the training plan is over: its last round is closed by an aggregate.

        No ``open_round`` may follow (``training_finished``), so no update can be submitted
        and no block is needed until some member sends a transaction.
        """
        rnd = self.round
        return not rnd.open and rnd.number >= self.config.training.rounds

    def plan_progress(self) -> dict[str, Any]:
        """The training plan as ``bcfl status`` shows it: rounds planned, whether it is
        finished, and the height and time of the block that finished it."""
        finished = self.plan_finished
        rnd = self.round
        return {
            "rounds": self.config.training.rounds,
            "finished": finished,
            "finished_height": rnd.closed_at if finished else None,
            "finished_time": rnd.closed_time if finished else None,
        }

    def member(self, did: str) -> Member | None:
        return self._members.get(did)

    def name_of(self, did: str) -> str:
        member = self._members.get(did)
        return member.name if member else did

    @property
    def validator_count(self) -> int:
        """Active members with the validator role and power (the set in force, as of now)."""
        return len(self._validators)

    # --- derived states: what the transaction rules of §6.3 build the next state with --------
    def _derive(self) -> ChainState:
        """A shallow copy inside ``apply``, keeping whether the members changed in the block."""
        new = object.__new__(ChainState)
        new.__dict__.update(self.__dict__)
        return new

    def with_join_request(self, request: JoinRequest) -> ChainState:
        """``request`` pending; its name is taken and an earlier expiry of its did forgotten."""
        new = self._derive()
        new._pending = self._pending.insert(request.did, request)
        new._names = self._names.insert(request.name, request.did)
        new._expired = self._expired.discard(request.did)
        return new

    def with_joins_at(self, height: int, dids: Iterable[str]) -> ChainState:
        """The applicants whose requests the block at ``height`` holds (the expiry index)."""
        new = self._derive()
        new._joins_at = self._joins_at.insert(height, tuple(dids))
        return new

    def with_approvals(self, request: JoinRequest, approvals: frozenset[str]) -> ChainState:
        """``request`` still pending, now with ``approvals``."""
        new = self._derive()
        new._pending = self._pending.insert(
            request.did, dataclasses.replace(request, approvals=approvals)
        )
        return new

    def with_admitted(self, request: JoinRequest, height: int) -> ChainState:
        """The applicant of ``request`` an active member since ``height``."""
        new = self._derive()
        new._pending = self._pending.remove(request.did)
        # a certificate another member pinned meanwhile is not pinned twice (issue 22)
        pin = request.tls if request.tls and self.tls_pinned_by(request.tls) is None else None
        new._put_member(
            Member(request.did, request.name, request.roles, request.power, ACTIVE, height, pin)
        )
        return new

    def with_tls_votes(self, mode: str, approvals: frozenset[str]) -> ChainState:
        """``approvals`` ask for trust mode ``mode``, still short of the threshold."""
        new = self._derive()
        new.tls_votes = self.tls_votes.insert(mode, approvals)
        return new

    def with_tls_mode(self, mode: str) -> ChainState:
        """The consortium trusts certificates by ``mode`` from now on; the votes start afresh."""
        new = self._derive()
        new.tls_mode = mode
        new.tls_votes = HashTrieMap()
        return new

    def with_tls_pin(self, member: Member, fingerprint: str) -> ChainState:
        """``member``'s node certificate is now the one of ``fingerprint`` (a rotation)."""
        new = self._derive()
        new._put_member(dataclasses.replace(member, tls=fingerprint))
        return new

    def with_removal_approvals(self, did: str, approvals: frozenset[str]) -> ChainState:
        """The removal of ``did`` asked by ``approvals``, still short of the threshold."""
        new = self._derive()
        new._removals = self._removals.insert(did, approvals)
        return new

    def with_removed(self, member: Member) -> ChainState:
        """``member`` removed (its removal approvals forgotten)."""
        new = self._derive()
        new._removals = self._removals.discard(member.did)
        new._put_member(dataclasses.replace(member, status=REMOVED))
        return new

    def with_round(self, rnd: RoundState) -> ChainState:
        new = self._derive()
        new.round = rnd
        return new

    def with_offence(self, offence: Offence) -> ChainState:
        new = self._derive()
        new.offences = self.offences.insert(offence)
        return new

    def _put_member(self, member: Member) -> None:
        """Add or replace ``member`` in a state just derived, keeping the role indexes and the
        names in step."""
        did = member.did
        self._members = self._members.insert(did, member)
        self._names = self._names.insert(member.name, did)
        self._validators = (
            self._validators.insert(did) if member.is_validator else self._validators.discard(did)
        )
        self._trainers = (
            self._trainers.insert(did) if member.is_trainer else self._trainers.discard(did)
        )
        self._members_changed = True

    def _expire_requests(self, height: int) -> None:
        """Drop the join requests that can no longer be approved at ``height`` (§6.3), and
        forget the expired ones older than one more TTL.

        Heights are consecutive, so the requests that expire at ``height`` are exactly those
        made at ``height - ttl - 1``, and the records forgotten are those of requests made one
        TTL before that: two lookups in the expiry index, whatever the number pending.
        """
        ttl = self.config.join_request_ttl_blocks
        made = height - ttl - 1
        for did in self._joins_at.get(made, ()):
            request = self._pending.get(did)
            if request is None or request.height != made:
                continue  # admitted meanwhile
            self._pending = self._pending.remove(did)
            if self._names.get(request.name) == did:
                self._names = self._names.remove(request.name)
            self._expired = self._expired.insert(did, ExpiredRequest(request.tx, height))
        old = made - ttl - 1
        for did in self._joins_at.get(old, ()):
            record = self._expired.get(did)
            if record is not None and record.expired_at == old + ttl + 1:
                self._expired = self._expired.remove(did)
        self._joins_at = self._joins_at.discard(old)

    def _compute_validator_set(self) -> ValidatorSet:
        return ValidatorSet.from_mapping({d: self._members[d].power for d in self._validators})

    # --- applying a block ----------------------------------------------------------------
    def apply(
        self,
        block: Block,
        *,
        checks: AppChecks | None = None,
        verify_signatures: bool = True,
        proposal: bool = False,
    ) -> ChainState:
        """The state after ``block``, or VerificationError for the first broken rule.

        ``verify_signatures=False`` is for callers that already verified every transaction and
        commit signature of this block (verify-chain does it in parallel beforehand).
        ``proposal=True`` judges a block that consensus has not decided yet: every rule but the
        commit certificate, which it cannot carry before validators vote on it.
        """
        digests = [tx_digest(tx) for tx in block.txs]
        check_header(self, block, digests)
        if not proposal:
            check_commit(self, block, verify_signatures=verify_signatures)
        new = self._copy()
        new._expire_requests(block.height)
        hashes = [h for h, _ in digests]
        new = _TxRules(new, block, hashes, checks, verify_signatures).run()
        new.height = block.height
        new.head_hash = block.hash
        new.head_time = block.header.time
        new.seen_tx = self.seen_tx.with_added(hashes)
        if new._members_changed:  # an admission or a removal: O(validators), governance only
            new.validator_set = new._compute_validator_set()
        return new

    def apply_proven(
        self,
        header: BlockHeader,
        commit: CommitCertificate | None,
        txs: list[Transaction],
        *,
        verify_signatures: bool = True,
    ) -> ChainState:
        """The membership state after a block known by its header, its commit and some of its
        transactions, each already proven to be in the block (a model proof, PROTOCOL.md §9).

        The header and certificate rules are those of :meth:`apply`; each given transaction
        passes the common rules (chain, replay among those seen, signature, active author),
        and membership transactions move the members and so the validator set. Round rules
        need the whole round and are not run: the certificate vouches for them.
        ``verify_signatures=False`` is for callers that check every signature apart.
        """
        check_link(self, header)
        check_validators(self, header)
        check_commit(self, Block(header, (), commit), verify_signatures=verify_signatures)
        new = self._copy()
        new._expire_requests(header.height)
        block = Block(header, tuple(txs), commit)
        hashes = [tx.hash for tx in txs]
        new = _TxRules(new, block, hashes, None, verify_signatures, handled=MEMBERSHIP_KINDS).run()
        new.height = header.height
        new.head_hash = header.hash
        new.head_time = header.time
        new.seen_tx = self.seen_tx.with_added(hashes)
        if new._members_changed:
            new.validator_set = new._compute_validator_set()
        return new


# --- §6.1 genesis ------------------------------------------------------------------------------
def check_genesis_block(block: Block, document: dict[str, Any], validators: ValidatorSet) -> None:
    header = block.header
    expected = {
        "height": (0, header.height),
        "prev": ("0" * 64, header.prev),
        "proposer": ("", header.proposer),
        "tx_root": (merkle_root([]), header.tx_root),
        "config": (hash_object(document), header.config),
        "validators": (validators.hash, header.validators),
    }
    for field, (want, found) in expected.items():
        if want != found:
            raise _fail(
                0, f"genesis_{field}", f"genesis {field}: expected {want!r}, found {found!r}"
            )
    if block.txs or block.commit is not None:
        raise _fail(0, "genesis_body", "genesis holds no transactions and no commit")


# --- §6.2 block rules ----------------------------------------------------------------------------
def check_header(
    state: ChainState, block: Block, digests: list[tuple[str, int]] | None = None
) -> None:
    """Header, size bounds and Merkle root; ``digests`` are the txs' (hash, size) if known."""
    if digests is None:
        digests = [tx_digest(tx) for tx in block.txs]
    header = block.header
    check_link(state, header)
    h = header.height
    if len(block.txs) > MAX_TXS_PER_BLOCK:
        raise _fail(
            h, "too_many_txs", f"at most {MAX_TXS_PER_BLOCK} transactions, found {len(block.txs)}"
        )
    total = 0
    for tx_hash, size in digests:
        if size > MAX_TX_BYTES:
            raise _fail(h, "tx_too_large", f"at most {MAX_TX_BYTES} bytes, found {size}", tx_hash)
        total += size
    if total > MAX_BLOCK_TX_BYTES:
        raise _fail(
            h,
            "block_too_large",
            f"transactions take at most {MAX_BLOCK_TX_BYTES} bytes, found {total}",
        )
    root = merkle_root([tx_hash for tx_hash, _ in digests])
    if header.tx_root != root:
        raise _fail(h, "tx_root_mismatch", f"tx_root: expected {root}, found {header.tx_root}")
    check_validators(state, header)


def check_link(state: ChainState, header: BlockHeader) -> None:
    """§6.2.1 height, hash link, time and config against the state after the parent block.

    Needs no transactions: a model proof (§9) checks every header of the chain this way.
    """
    h = header.height
    if h != state.height + 1:
        raise _fail(h, "wrong_height", f"height: expected {state.height + 1}, found {h}")
    if header.prev != state.head_hash:
        raise _fail(h, "wrong_prev", f"prev: expected {state.head_hash}, found {header.prev}")
    check_block_time(state, header.time, h)
    config_hash = state.config_hash
    if header.config != config_hash:
        raise _fail(h, "wrong_config", f"config: expected {config_hash}, found {header.config}")


def check_validators(state: ChainState, header: BlockHeader) -> None:
    """§6.2.3 the header names the validator set in force and a proposer from it."""
    h = header.height
    vs = state.validator_set
    if header.validators != vs.hash:
        raise _fail(
            h,
            "wrong_validator_set",
            f"validators: expected {vs.hash} (set in force), found {header.validators}",
        )
    if header.proposer not in vs:
        raise _fail(
            h, "proposer_not_validator", f"proposer {header.proposer} is not in the validator set"
        )


def check_block_time(state: ChainState, time_ms: int, height: int) -> None:
    """§6.2 block time: later than the parent's, by at most ``MAX_BLOCK_TIME_STEP_MS``.

    A rule of the chain alone, so verify-chain re-checks it. Checked here, not first when the
    header is encoded: a block time past the safe integer range would otherwise be refused
    only when someone hashes the *next* block, after the chain has committed to a head that
    has no valid successor.
    """
    parent = state.head_time
    if not 0 <= time_ms <= MAX_SAFE_INT:
        raise _fail(
            height,
            "time_out_of_range",
            f"time: expected 0 .. {MAX_SAFE_INT} ms, found {time_ms}",
        )
    if time_ms <= parent:
        raise _fail(
            height, "time_not_increasing", f"time: expected more than {parent}, found {time_ms}"
        )
    if time_ms - parent > MAX_BLOCK_TIME_STEP_MS:
        raise _fail(
            height,
            "time_step_too_large",
            f"time: expected at most {parent + MAX_BLOCK_TIME_STEP_MS} "
            f"(parent + {MAX_BLOCK_TIME_STEP_MS} ms), found {time_ms}",
        )


def check_proposal_time(block: Block, now_ms: int, *, parent_time: int | None = None) -> None:
    """§6.2 prevote rule: a proposed block's time is at most ``MAX_CLOCK_DRIFT_MS`` past the
    validator's own clock ``now_ms`` and, given its parent's time, at most
    ``MAX_CLOCK_LAG_MS`` behind it unless the chain's step limit holds it back (a chain idle
    for more than a day catches up a day a block).

    Not a chain rule (a verifier has no clock to compare with): each validator applies it
    before it prevotes, so a proposer alone cannot date a block into the future; a block
    needs the prevotes of more than 2/3 of the power, hence of honest validators whose clocks
    it must not outrun. ``check_block_time`` bounds what the chain can hold regardless.
    """
    limit = now_ms + MAX_CLOCK_DRIFT_MS
    if block.header.time > limit:
        raise _fail(
            block.height,
            "time_in_future",
            f"time: expected at most {limit} (local clock {now_ms} + {MAX_CLOCK_DRIFT_MS} ms), "
            f"found {block.header.time}",
        )
    if parent_time is None:
        return
    floor = min(now_ms - MAX_CLOCK_LAG_MS, parent_time + MAX_BLOCK_TIME_STEP_MS)
    if block.header.time < floor:
        raise _fail(
            block.height,
            "time_in_past",
            f"time: expected at least {floor} (local clock {now_ms} - {MAX_CLOCK_LAG_MS} ms), "
            f"found {block.header.time}",
        )


# --- §5 commit certificates ----------------------------------------------------------------------
def check_commit(state: ChainState, block: Block, *, verify_signatures: bool = True) -> None:
    h = block.height
    commit = block.commit
    if commit is None:
        raise _fail(h, "missing_commit", "no commit certificate")
    block_hash = block.hash
    if commit.height != h or commit.block != block_hash:
        raise _fail(
            h,
            "commit_mismatch",
            f"commit: expected height {h} block {block_hash}, "
            f"found height {commit.height} block {commit.block}",
        )
    vs = state.validator_set
    signed = 0
    for did, sig in commit.signatures:
        power = vs.power_of(did)
        if power == 0:
            raise _fail(h, "commit_signer_unknown", f"commit signer {did} is not a validator")
        if verify_signatures and not commit.precommit(state.chain_id, did, sig).signature_valid():
            raise _fail(h, "bad_commit_signature", f"commit signature of {did} is invalid")
        signed += power
    if not vs.has_quorum(signed):
        raise _fail(
            h,
            "no_quorum",
            f"commit power: expected at least {vs.quorum_power()} of {vs.total_power}, "
            f"found {signed}",
        )


def round_deadlines(plan: TrainingPlan, height: int, time_ms: int) -> tuple[int, int | None]:
    """(``deadline_height``, ``deadline_time``) of a round opened by the block at ``height``
    with time ``time_ms`` (PROTOCOL.md §6.3): ``deadline_height`` is 0 when the plan has no
    deadline in blocks; ``deadline_time`` is None (left out of the body) when it has none in
    seconds."""
    blocks = height + plan.deadline_blocks if plan.deadline_blocks is not None else 0
    seconds = plan.round_deadline_s
    return blocks, (time_ms + seconds * 1000 if seconds is not None else None)


# --- §6.3 transaction rules --------------------------------------------------------------------
class _TxRules:
    """One block's transactions applied in order on top of ``state``; ``run`` returns the
    state after them. Each rule reads a typed body (``protocol/txbodies.py``) and builds the
    next state through ``ChainState``'s ``with_*`` methods."""

    def __init__(
        self,
        state: ChainState,
        block: Block,
        hashes: list[str],
        checks: AppChecks | None,
        verify_signatures: bool,
        *,
        handled: frozenset[TxKind] | None = None,
    ) -> None:
        self.handled = handled  # None: every kind; else only these (the others pass common)
        self._hash_of = {id(tx): h for tx, h in zip(block.txs, hashes, strict=True)}
        self.s = state
        self.block = block
        self.h = block.height
        self.proposer = block.header.proposer
        self.checks = checks
        self.verify_signatures = verify_signatures
        self.in_block: set[str] = set()
        # an update waiting for its validation
        self.awaiting: tuple[Transaction, UpdateBody] | None = None
        self.joined: list[str] = []  # applicants whose request this block holds (expiry index)

    def fail(self, tx: Transaction, code: str, message: str) -> VerificationError:
        return _fail(self.h, code, message, self.hash_of(tx))

    def hash_of(self, tx: Transaction) -> str:
        return self._hash_of[id(tx)]

    def run(self) -> ChainState:
        for tx in self.block.txs:
            self.common(tx)
            if self.awaiting is not None and tx.kind is not TxKind.VALIDATION:
                raise _fail(
                    self.h,
                    "missing_validation",
                    f"update must be followed by its validation, found {tx.kind}",
                    self.hash_of(self.awaiting[0]),
                )
            if self.handled is None or tx.kind in self.handled:
                self.dispatch(tx, self.body(tx))
        if self.awaiting is not None:
            raise _fail(
                self.h,
                "missing_validation",
                "update must be followed by its validation, found the end of the block",
                self.hash_of(self.awaiting[0]),
            )
        if self.joined:
            self.s = self.s.with_joins_at(self.h, self.joined)
        return self.s

    def body(self, tx: Transaction) -> TxBody:
        """The typed body; a body that breaks its schema is this transaction's fault."""
        try:
            return tx.parsed_body
        except EncodingError as exc:
            raise self.fail(tx, "malformed_body", exc.message) from exc

    def dispatch(self, tx: Transaction, body: TxBody) -> None:
        match body:
            case JoinRequestBody():
                self.on_join_request(tx, body)
            case ApproveMemberBody():
                self.on_approve_member(tx, body)
            case RemoveMemberBody():
                self.on_remove_member(tx, body)
            case OpenRoundBody():
                self.on_open_round(tx, body)
            case UpdateBody():
                self.on_update(tx, body)
            case ValidationBody():
                self.on_validation(tx, body)
            case AggregateBody():
                self.on_aggregate(tx, body)
            case MisbehaviourBody():
                self.on_misbehaviour(tx, body)
            case TlsCertificateBody():
                self.on_tls_certificate(tx, body)
            case TlsModeBody():
                self.on_tls_mode(tx, body)
            case _:
                assert_never(body)

    def common(self, tx: Transaction) -> None:
        if tx.chain != self.s.chain_id:
            raise self.fail(
                tx, "wrong_chain", f"chain: expected {self.s.chain_id}, found {tx.chain}"
            )
        tx_hash = self.hash_of(tx)
        if tx_hash in self.s.seen_tx or tx_hash in self.in_block:
            raise self.fail(tx, "replayed_tx", "transaction already on the chain")
        self.in_block.add(tx_hash)
        if self.verify_signatures and not tx_signature_valid(tx.author, tx_hash, tx.signature):
            raise self.fail(tx, "bad_tx_signature", f"signature of author {tx.author} is invalid")
        if tx.kind is not TxKind.JOIN_REQUEST:
            member = self.s.member(tx.author)
            if member is None or not member.active:
                raise self.fail(tx, "not_member", f"author {tx.author} is not an active member")

    def require_validator(self, tx: Transaction) -> None:
        member = self.s.member(tx.author)
        if member is None or not member.is_validator:
            raise self.fail(tx, "not_validator", f"author {tx.author} is not an active validator")

    def require_proposer(self, tx: Transaction) -> None:
        if tx.author != self.proposer:
            raise self.fail(
                tx,
                "not_proposer",
                f"{tx.kind} author: expected the proposer {self.proposer}, found {tx.author}",
            )

    def require_open_round(self, tx: Transaction, number: int) -> RoundState:
        rnd = self.s.round
        if not rnd.open:
            raise self.fail(tx, "round_not_open", f"no round is open (latest is {rnd.number})")
        if number != rnd.number:
            raise self.fail(tx, "wrong_round", f"round: expected {rnd.number}, found {number}")
        return rnd

    # --- membership ----------------------------------------------------------------------
    def on_join_request(self, tx: Transaction, body: JoinRequestBody) -> None:
        member = self.s.member(tx.author)
        if member is not None:
            code = "removed_member" if not member.active else "already_member"
            raise self.fail(tx, code, f"{tx.author} is already a member ({member.status})")
        if tx.author in self.s.pending:
            raise self.fail(tx, "request_pending", f"{tx.author} already has a pending request")
        if body.tls is not None and self.s.tls_pinned_by(body.tls) is not None:
            raise self.fail(tx, "tls_pin_taken", "this TLS certificate is pinned by another member")
        if self.s.name_taken(body.name):
            raise self.fail(tx, "name_taken", f"member name {body.name!r} is taken")
        if self.s.joins_full:
            cap = self.s.config.max_pending_joins
            raise self.fail(
                tx,
                "join_requests_full",
                f"{cap} join requests are pending, the most the consortium holds "
                "(max_pending_joins); ask again once one is approved or expires",
            )
        self.s = self.s.with_join_request(
            JoinRequest(
                self.hash_of(tx),
                tx.author,
                body.name,
                body.roles,
                body.power,
                height=self.h,
                tls=body.tls,
            )
        )
        self.joined.append(tx.author)

    def on_approve_member(self, tx: Transaction, body: ApproveMemberBody) -> None:
        self.require_validator(tx)
        request = self.s.pending.get(body.member)
        if request is None:
            expired = self.s.expired_requests.get(body.member)
            if expired is not None and expired.tx == body.request:
                raise self.fail(
                    tx,
                    "request_expired",
                    f"join request {expired.tx[:16]} of {body.member} expired unapproved at "
                    f"height {expired.expired_at} (join_request_ttl_blocks = "
                    f"{self.s.config.join_request_ttl_blocks}); the applicant must send a new one",
                )
            raise self.fail(tx, "no_pending_request", f"{body.member} has no pending request")
        if request.tx != body.request:
            raise self.fail(
                tx, "wrong_request", f"request: expected {request.tx}, found {body.request}"
            )
        if tx.author in request.approvals:
            raise self.fail(tx, "duplicate_approval", f"{tx.author} already approved this request")
        approvals = request.approvals | {tx.author}  # at most the validators: small
        if len(approvals) >= self.s.config.admission_approvals:
            self.s = self.s.with_admitted(request, self.h)
        else:
            self.s = self.s.with_approvals(request, approvals)

    def on_remove_member(self, tx: Transaction, body: RemoveMemberBody) -> None:
        self.require_validator(tx)
        subject = self.s.member(body.member)
        if subject is None or not subject.active:
            raise self.fail(tx, "not_active_member", f"{body.member} is not an active member")
        approvals = self.s.removals.get(subject.did, frozenset())
        if tx.author in approvals:
            raise self.fail(tx, "duplicate_approval", f"{tx.author} already asked this removal")
        approvals = approvals | {tx.author}
        if len(approvals) < self.s.config.removal_approvals:
            self.s = self.s.with_removal_approvals(subject.did, approvals)
            return
        self.keep_thresholds_reachable(tx, subject)
        self.s = self.s.with_removed(subject)

    def keep_thresholds_reachable(self, tx: Transaction, subject: Member) -> None:
        """Refuse a removal after which too few validators remain to ever reach the admission
        or the removal threshold: no member could then be admitted or removed again (§6.3)."""
        remaining = self.s.validator_count - (1 if subject.is_validator else 0)
        if not remaining:
            raise self.fail(tx, "last_validator", f"removing {subject.did} leaves no validator")
        if not subject.is_validator:
            return
        cfg = self.s.config
        unreachable = [
            f"{name} = {needed}"
            for name, needed in (
                ("admission_approvals", cfg.admission_approvals),
                ("removal_approvals", cfg.removal_approvals),
            )
            if needed > remaining
        ]
        if unreachable:
            raise self.fail(
                tx,
                "threshold_unreachable",
                f"removing validator {subject.did} leaves {remaining} validator(s), fewer than "
                f"{' and '.join(unreachable)}: no member could be admitted or removed again",
            )

    # --- rounds --------------------------------------------------------------------------
    def on_open_round(self, tx: Transaction, body: OpenRoundBody) -> None:
        self.require_proposer(tx)
        rnd = self.s.round
        if rnd.open:
            raise self.fail(tx, "round_already_open", f"round {rnd.number} is still open")
        if body.round != rnd.number + 1:
            raise self.fail(
                tx,
                "round_out_of_sequence",
                f"round: expected {rnd.number + 1}, found {body.round}",
            )
        limit = self.s.config.training.rounds
        if body.round > limit:
            raise self.fail(tx, "training_finished", f"the plan has {limit} rounds")
        if body.base_model != rnd.model:
            raise self.fail(
                tx,
                "wrong_base_model",
                f"base_model: expected {rnd.model}, found {body.base_model}",
            )
        deadline, deadline_time = round_deadlines(
            self.s.config.training, self.h, self.block.header.time
        )
        if body.deadline_height != deadline:
            raise self.fail(
                tx,
                "wrong_deadline",
                f"deadline_height: expected {deadline}, found {body.deadline_height}",
            )
        if body.deadline_time != deadline_time:
            raise self.fail(
                tx,
                "wrong_deadline_time",
                f"deadline_time: expected {deadline_time}, found {body.deadline_time}",
            )
        self.s = self.s.with_round(
            RoundState(
                number=body.round,
                open=True,
                base_model=rnd.model,
                model=rnd.model,
                opened_at=self.h,
                deadline_height=deadline,
                deadline_time=deadline_time or 0,
            )
        )

    def on_update(self, tx: Transaction, body: UpdateBody) -> None:
        member = self.s.member(tx.author)
        if member is None or not member.is_trainer:
            raise self.fail(tx, "not_trainer", f"author {tx.author} is not an active trainer")
        rnd = self.require_open_round(tx, body.round)
        if body.base_model != rnd.base_model:
            raise self.fail(
                tx,
                "wrong_base_model",
                f"base_model: expected {rnd.base_model}, found {body.base_model}",
            )
        if tx.author in rnd.submitted:
            raise self.fail(
                tx, "duplicate_update", f"{tx.author} already sent an update this round"
            )
        self.awaiting = (tx, body)

    def on_validation(self, tx: Transaction, body: ValidationBody) -> None:
        if self.awaiting is None:
            raise self.fail(tx, "orphan_validation", "a validation must directly follow its update")
        update, claim = self.awaiting
        self.require_proposer(tx)
        if body.update != self.hash_of(update):
            raise self.fail(
                tx,
                "wrong_update",
                f"update: expected {self.hash_of(update)}, found {body.update}",
            )
        if self.checks is not None:
            try:
                verdict = self.checks.check_update(self.s, update)
            except BcflError as exc:
                raise self.fail(tx, "update_check_failed", exc.message) from exc
            want = ("accept" if verdict.accept else "reject", verdict.reason)
            found = (body.verdict, body.reason)
            if want != found:
                raise self.fail(tx, "verdict_mismatch", f"verdict: expected {want}, found {found}")
        rnd = self.s.round
        accepted = rnd.accepted
        if body.accept:
            accepted = (
                *accepted,
                AcceptedUpdate(
                    self.hash_of(update),
                    update.author,
                    claim.blob,
                    claim.blob_size,
                    claim.num_samples,
                ),
            )
        self.s = self.s.with_round(rnd.with_update(accepted, rnd.submitted | {update.author}))
        self.awaiting = None

    def on_aggregate(self, tx: Transaction, body: AggregateBody) -> None:
        self.require_proposer(tx)
        rnd = self.require_open_round(tx, body.round)
        plan = self.s.config.training
        time_ms = self.block.header.time
        if not self.s.round_may_close(self.h, time_ms):
            deadlines = " or ".join(
                d
                for d in (
                    f"height {rnd.deadline_height}" if rnd.deadline_height else "",
                    f"time {rnd.deadline_time}" if rnd.deadline_time else "",
                )
                if d
            )
            raise self.fail(
                tx,
                "aggregate_too_early",
                f"expected {plan.min_updates} accepted updates, an update from every trainer "
                f"or {deadlines}, found {len(rnd.accepted)} accepted of "
                f"{len(rnd.submitted)} submitted at height {self.h}, time {time_ms}",
            )
        updates = list(body.updates)
        if updates != rnd.accepted_hashes:
            raise self.fail(
                tx,
                "wrong_update_set",
                f"updates: expected {rnd.accepted_hashes}, found {updates}",
            )
        cfg = self.s.config
        if body.rule != cfg.aggregation_rule:
            raise self.fail(
                tx, "wrong_rule", f"rule: expected {cfg.aggregation_rule!r}, found {body.rule!r}"
            )
        params = dict(body.params)
        if params != cfg.aggregation_params:
            raise self.fail(
                tx,
                "wrong_params",
                f"params: expected {cfg.aggregation_params}, found {params}",
            )
        if not rnd.accepted and body.model != rnd.base_model:
            raise self.fail(
                tx,
                "empty_aggregate_model",
                f"an aggregate of no update keeps the base model {rnd.base_model}, "
                f"found {body.model}",
            )
        if self.checks is not None:
            try:
                self.checks.check_aggregate(self.s, tx)
            except VerificationError:
                raise
            except BcflError as exc:
                raise self.fail(tx, "aggregate_check_failed", exc.message) from exc
        self.s = self.s.with_round(rnd.closed_by(body.model, self.h, self.block.header.time))

    # --- transport (issue 22) -----------------------------------------------------------
    def on_tls_certificate(self, tx: Transaction, body: TlsCertificateBody) -> None:
        """A member pins a new node certificate: the rotation takes effect at this height."""
        if self.s.tls_mode != "pinned":
            raise self.fail(
                tx, "tls_not_pinned", "the consortium does not pin certificates (consortium.tls)"
            )
        holder = self.s.tls_pinned_by(body.fingerprint)
        if holder is not None:
            code = "tls_pin_unchanged" if holder == tx.author else "tls_pin_taken"
            raise self.fail(tx, code, f"this TLS certificate is already pinned by {holder}")
        member = self.s.member(tx.author)
        assert member is not None  # common() admitted only active members
        self.s = self.s.with_tls_pin(member, body.fingerprint)

    def on_tls_mode(self, tx: Transaction, body: TlsModeBody) -> None:
        """A validator asks for another trust mode; it changes once ``admission_approvals``
        validators asked for the same one (a consortium decision, like an admission)."""
        self.require_validator(tx)
        if body.mode == self.s.tls_mode:
            raise self.fail(tx, "tls_mode_unchanged", f"the consortium's mode is {body.mode}")
        approvals = self.s.tls_votes.get(body.mode, frozenset())
        if tx.author in approvals:
            raise self.fail(tx, "duplicate_approval", f"{tx.author} already asked for {body.mode}")
        approvals = approvals | {tx.author}
        if len(approvals) >= self.s.config.admission_approvals:
            self.s = self.s.with_tls_mode(body.mode)
        else:
            self.s = self.s.with_tls_votes(body.mode, approvals)

    # --- evidence ------------------------------------------------------------------------
    def on_misbehaviour(self, tx: Transaction, body: MisbehaviourBody) -> None:
        self.require_validator(tx)
        try:
            a, b = (Vote.from_dict(dict(v)) for v in body.votes)
        except EncodingError as exc:
            raise self.fail(tx, "bad_evidence", f"vote malformed: {exc.message}") from exc
        offender = body.offender
        for vote in (a, b):
            if vote.validator != offender or vote.chain != self.s.chain_id:
                raise self.fail(
                    tx, "bad_evidence", "both votes must be the offender's, on this chain"
                )
        if (a.height, a.round, a.type) != (b.height, b.round, b.type) or a.block == b.block:
            raise self.fail(
                tx,
                "bad_evidence",
                "votes must share height, round and type and name different blocks",
            )
        if not (a.signature_valid() and b.signature_valid()):
            raise self.fail(tx, "bad_evidence", "a vote signature is invalid")
        offence = (offender, a.height, a.round, str(a.type))
        if offence in self.s.offences:
            raise self.fail(
                tx,
                "duplicate_evidence",
                f"equivocation of {offender} at height {a.height} round {a.round} ({a.type}) "
                "is already recorded",
            )
        self.s = self.s.with_offence(offence)
