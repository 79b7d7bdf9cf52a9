"""Consensus messages, events and actions (docs/CONSENSUS.md §Messages).

Votes are the protocol's own ``Vote`` (PREVOTE/PRECOMMIT, ``NIL`` = "" for no block) so that the
PRECOMMITs gathered here *are* a block's ``CommitCertificate``. The only new wire type is the
PROPOSAL: the signature covers a small unsigned dict naming the block by its hash, and the block
travels beside it (``payload``) so a receiver hashes the header once instead of canonicalising
every transaction to check a signature.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import nacl.signing

from bcfl_cli.errors import EncodingError
from bcfl_cli.protocol.block import (
    MAX_VALIDATORS,
    Block,
    CommitCertificate,
    ValidatorSet,
    Vote,
    VoteType,
)
from bcfl_cli.protocol.crypto import (
    Domain,
    did_from_public_key,
    is_did,
    sign_digest,
    verify_by_did,
)
from bcfl_cli.protocol.encoding import hash_object, is_hash_hex, is_signature_hex, is_version
from bcfl_cli.protocol.tx import PROTOCOL_VERSION

_MAX_INT = 2**53 - 1


class Step(enum.IntEnum):
    """step_p of the paper, plus COMMITTED: decided, waiting for the next height to start."""

    PROPOSE = 0
    PREVOTE = 1
    PRECOMMIT = 2
    COMMITTED = 3


class TimeoutKind(enum.StrEnum):
    PROPOSE = "propose"
    PREVOTE = "prevote"
    PRECOMMIT = "precommit"


class Validity(enum.Enum):
    """Answer of the application's block check. UNKNOWN: a blob is missing, ask again later."""

    VALID = "valid"
    INVALID = "invalid"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Proposal:
    """⟨PROPOSAL, h, r, v, validRound⟩ of the paper, signed under ``Domain.PROPOSAL``."""

    chain: str
    height: int
    round: int
    block: Block
    valid_round: int  # -1, or the round in which the proposer saw 2f+1 prevotes for ``block``
    proposer: str
    signature: str = ""

    @cached_property
    def block_hash(self) -> str:
        return self.block.hash

    def unsigned(self) -> dict[str, Any]:
        return {
            "v": PROTOCOL_VERSION,
            "chain": self.chain,
            "height": self.height,
            "round": self.round,
            "block": self.block_hash,
            "valid_round": self.valid_round,
            "proposer": self.proposer,
        }

    @cached_property
    def hash(self) -> str:
        return hash_object(self.unsigned())

    def to_dict(self) -> dict[str, Any]:
        return {**self.unsigned(), "sig": self.signature, "payload": self.block.to_dict()}

    def signature_valid(self) -> bool:
        return verify_by_did(self.proposer, Domain.PROPOSAL, self.hash, self.signature)

    def signed(self, key: nacl.signing.SigningKey) -> Proposal:
        if did_from_public_key(bytes(key.verify_key)) != self.proposer:
            raise EncodingError("proposal signed with a key that is not the proposer's")
        return Proposal(
            self.chain,
            self.height,
            self.round,
            self.block,
            self.valid_round,
            self.proposer,
            sign_digest(key, Domain.PROPOSAL, self.hash),
        )

    @classmethod
    def from_dict(cls, data: Any) -> Proposal:
        keys = {"v", "chain", "height", "round", "block", "valid_round", "proposer", "sig"}
        if not isinstance(data, dict) or set(data) != keys | {"payload"}:
            raise EncodingError(f"proposal fields must be exactly {sorted(keys | {'payload'})}")
        if not is_version(data["v"], PROTOCOL_VERSION) or not is_hash_hex(data["chain"]):
            raise EncodingError("proposal version or chain invalid")
        for name in ("height", "round"):
            v = data[name]
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= _MAX_INT:
                raise EncodingError(f"proposal {name} must be a non-negative integer")
        vr = data["valid_round"]
        if not isinstance(vr, int) or isinstance(vr, bool) or not -1 <= vr < data["round"]:
            raise EncodingError("proposal valid_round must be -1 or an earlier round")
        if not is_did(data["proposer"]) or not is_signature_hex(data["sig"]):
            raise EncodingError("proposal proposer or signature malformed")
        block = Block.from_dict(data["payload"])
        if block.commit is not None:
            raise EncodingError("a proposed block carries no commit certificate yet")
        proposal = cls(
            data["chain"],
            data["height"],
            data["round"],
            block,
            vr,
            data["proposer"],
            data["sig"],
        )
        if proposal.block_hash != data["block"] or block.height != proposal.height:
            raise EncodingError("proposal names a block other than the one it carries")
        return proposal


# --- events (inputs of Engine.handle) ---------------------------------------------------------
@dataclass(frozen=True)
class StartHeight:
    """Begin consensus for ``height`` under the validator set in force there (paper: start)."""

    height: int
    validators: ValidatorSet


@dataclass(frozen=True)
class ProposalReceived:
    proposal: Proposal


@dataclass(frozen=True)
class VoteReceived:
    vote: Vote


@dataclass(frozen=True)
class TimeoutFired:
    kind: TimeoutKind
    height: int
    round: int


@dataclass(frozen=True)
class Recheck:
    """A blob the application lacked has arrived: re-ask ``validate`` and re-run the rules."""


@dataclass(frozen=True)
class CommitReceived:
    """A block of the current height with its commit certificate, fetched from a peer (sync)."""

    block: Block


Event = StartHeight | ProposalReceived | VoteReceived | TimeoutFired | Recheck | CommitReceived


# --- actions (outputs) -------------------------------------------------------------------------
@dataclass(frozen=True)
class LockProof:
    """Why validValue is valid: its PROPOSAL in validRound and the PREVOTEs for it there.

    A peer that missed some of those messages (a Byzantine validator may have prevoted to us
    alone) cannot accept the re-proposal of validValue (L28), and if we are locked on it the
    height may never end. Persisted with the lock, so that a restarted validator can still show
    it. Kept without what ``EngineState`` already holds (the block, the height, validRound):
    the proposal's author, its own valid_round and signature, and each prevote's signer and
    signature, sorted by signer. Restored messages are checked like any received ones.
    """

    proposer: str
    proposal_valid_round: int
    proposal_signature: str
    prevotes: tuple[tuple[str, str], ...]  # (validator did, signature hex), sorted by did

    def messages(self, chain: str, height: int, round: int, block: Block) -> list[Proposal | Vote]:
        """The proposal and prevotes, rebuilt for ``block`` at (``height``, ``round``)."""
        proposal = Proposal(
            chain,
            height,
            round,
            block,
            self.proposal_valid_round,
            self.proposer,
            self.proposal_signature,
        )
        votes = [
            Vote(chain, height, round, VoteType.PREVOTE, proposal.block_hash, did, sig)
            for did, sig in self.prevotes
        ]
        return [proposal, *votes]

    def to_dict(self) -> dict[str, Any]:
        return {
            "proposer": self.proposer,
            "valid_round": self.proposal_valid_round,
            "sig": self.proposal_signature,
            "prevotes": [{"validator": d, "sig": s} for d, s in self.prevotes],
        }

    @classmethod
    def from_dict(cls, data: Any) -> LockProof:
        if not isinstance(data, dict) or set(data) != {
            "proposer",
            "valid_round",
            "sig",
            "prevotes",
        }:
            raise EncodingError("lock proof fields must be proposer, valid_round, sig, prevotes")
        vr = data["valid_round"]
        if not isinstance(vr, int) or isinstance(vr, bool) or not -1 <= vr <= _MAX_INT:
            raise EncodingError("lock proof valid_round must be an integer >= -1")
        if not is_did(data["proposer"]) or not is_signature_hex(data["sig"]):
            raise EncodingError("lock proof proposer or signature malformed")
        prevotes = data["prevotes"]
        if not isinstance(prevotes, list) or len(prevotes) > MAX_VALIDATORS:
            raise EncodingError(f"lock proof holds at most {MAX_VALIDATORS} prevotes")
        pairs: list[tuple[str, str]] = []
        for item in prevotes:
            if not isinstance(item, dict) or set(item) != {"validator", "sig"}:
                raise EncodingError("lock proof prevote must be {validator, sig}")
            if not is_did(item["validator"]) or not is_signature_hex(item["sig"]):
                raise EncodingError("lock proof prevote validator or sig malformed")
            pairs.append((item["validator"], item["sig"]))
        if [p[0] for p in pairs] != sorted({p[0] for p in pairs}):
            raise EncodingError("lock proof prevotes must be sorted by validator, without repeats")
        return cls(data["proposer"], vr, data["sig"], tuple(pairs))

    @classmethod
    def from_messages(cls, proposal: Proposal, prevotes: list[Vote]) -> LockProof:
        """The proof of ``proposal``'s block from its prevotes (one per signer is enough)."""
        by_did = {v.validator: v.signature for v in prevotes if v.block == proposal.block_hash}
        return cls(
            proposal.proposer,
            proposal.valid_round,
            proposal.signature,
            tuple(sorted(by_did.items())),
        )


@dataclass(frozen=True)
class EngineState:
    """What must survive a crash: the lock (paper lines 6-9), where we voted, and the proof.

    Persisted atomically with every vote or proposal the node signs (see VoteGuard), so a
    restarted validator neither unlocks nor re-enters a step it already voted in (safety), and
    can still show peers why validValue is valid (``proof``, liveness: issue 16, item 10).
    """

    height: int
    round: int
    step: Step
    locked_round: int = -1
    locked_block: Block | None = None
    valid_round: int = -1
    valid_block: Block | None = None
    proof: LockProof | None = None

    def proof_messages(self, chain: str) -> list[Proposal | Vote]:
        """The persisted proof of validValue as messages, to re-admit and re-send after a
        restart; empty when there is none (nothing valid yet, or a file from before it)."""
        if self.proof is None or self.valid_block is None or self.valid_round < 0:
            return []
        return self.proof.messages(chain, self.height, self.valid_round, self.valid_block)

    def to_dict(self) -> dict[str, Any]:
        return {
            "height": self.height,
            "round": self.round,
            "step": int(self.step),
            "locked_round": self.locked_round,
            "locked_block": self.locked_block.to_dict() if self.locked_block else None,
            "valid_round": self.valid_round,
            "valid_block": self.valid_block.to_dict() if self.valid_block else None,
            "proof": self.proof.to_dict() if self.proof else None,
        }

    @classmethod
    def from_dict(cls, data: Any) -> EngineState:
        keys = {"height", "round", "step", "locked_round", "locked_block"}
        keys |= {"valid_round", "valid_block"}
        # "proof" is absent from a vote guard written before it existed: no proof, as then.
        if not isinstance(data, dict) or set(data) not in (keys, keys | {"proof"}):
            raise EncodingError(f"engine state fields must be exactly {sorted(keys)} (+ proof)")
        for name in ("height", "round", "step", "locked_round", "valid_round"):
            v = data[name]
            if not isinstance(v, int) or isinstance(v, bool) or not -1 <= v <= _MAX_INT:
                raise EncodingError(f"engine state {name} must be an integer")
        if data["step"] not in {int(s) for s in Step}:
            raise EncodingError("engine state step must be 0 to 3")
        locked = data["locked_block"]
        valid = data["valid_block"]
        proof = data.get("proof")
        return cls(
            data["height"],
            data["round"],
            Step(data["step"]),
            data["locked_round"],
            None if locked is None else Block.from_dict(locked),
            data["valid_round"],
            None if valid is None else Block.from_dict(valid),
            None if proof is None else LockProof.from_dict(proof),
        )


@dataclass(frozen=True)
class BroadcastProposal:
    """Sign (after the vote guard recorded it together with ``state``) and send to all."""

    proposal: Proposal
    state: EngineState


@dataclass(frozen=True)
class BroadcastVote:
    """Sign (after the vote guard recorded it together with ``state``), send to all, and feed
    the signed vote back as VoteReceived: the engine counts its own vote like any other."""

    vote: Vote
    state: EngineState


@dataclass(frozen=True)
class ScheduleTimeout:
    kind: TimeoutKind
    height: int
    round: int
    duration_ms: int


@dataclass(frozen=True)
class Commit:
    """A decision (paper line 51): append ``block`` (which carries ``certificate``)."""

    block: Block
    certificate: CommitCertificate
    round: int


@dataclass(frozen=True)
class Evidence:
    """Two signed, conflicting votes of one validator at one (height, round, type)."""

    first: Vote
    second: Vote

    @property
    def offender(self) -> str:
        return self.first.validator

    def to_body(self) -> dict[str, Any]:
        """The body of a ``misbehaviour`` transaction."""
        return {"offender": self.offender, "votes": [self.first.to_dict(), self.second.to_dict()]}


Action = BroadcastProposal | BroadcastVote | ScheduleTimeout | Commit | Evidence


@dataclass(frozen=True)
class TimeoutConfig:
    """Per-step timeouts in milliseconds, growing with the consensus round r of a height::

        timeoutX(r) = max(initX, min(max_ms, initX * backoff**r + r * delta_ms))

    The paper (§3) grows them linearly (``backoff=1``, ``delta_ms > 0``); that only eventually
    exceeds the real message delay, and when validators are CPU-starved (many nodes on few
    cores) the delay is many seconds and a linear schedule needs many failed rounds to catch
    up. The default doubles per round from a fast round 0 and is capped at 60 s. The round
    restarts at 0 with each height, so one slow height does not slow the next.
    """

    propose_ms: int = 3_000
    prevote_ms: int = 1_000
    precommit_ms: int = 1_000
    delta_ms: int = 0
    backoff: float = 2.0
    max_ms: int = 60_000

    def __post_init__(self) -> None:
        if min(self.propose_ms, self.prevote_ms, self.precommit_ms, self.delta_ms) < 0:
            raise ValueError("timeouts must not be negative")
        if not 1.0 <= self.backoff <= 10.0:
            raise ValueError("timeout backoff must be within [1, 10]")
        if self.max_ms <= 0:
            raise ValueError("timeout cap must be positive")

    def duration(self, kind: TimeoutKind, round: int) -> int:
        base = {
            TimeoutKind.PROPOSE: self.propose_ms,
            TimeoutKind.PREVOTE: self.prevote_ms,
            TimeoutKind.PRECOMMIT: self.precommit_ms,
        }[kind]
        if round <= 0:
            return base
        grown = float(base)
        if self.backoff > 1.0:
            # Multiply step by step and stop at the cap: no float overflow for a huge round.
            for _ in range(round):
                grown *= self.backoff
                if grown >= self.max_ms:
                    break
        grown = min(float(self.max_ms), grown) + round * self.delta_ms
        return max(base, min(self.max_ms, int(grown)))
