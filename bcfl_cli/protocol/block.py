"""Blocks, votes, commit certificates and validator sets (docs/PROTOCOL.md §4-§5).

A block header is hashed canonically; the block is final once it carries a commit certificate:
PRECOMMIT signatures for its hash from validators holding more than 2/3 of the voting power of
the validator set in force at its height. Genesis (height 0) has no certificate: its hash *is*
the consortium's identity, pinned by every member.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Annotated, Any

import msgspec
import nacl.signing

from bcfl_cli.errors import EncodingError
from bcfl_cli.protocol.crypto import Domain, did_from_public_key, is_did, sign_digest, verify_by_did
from bcfl_cli.protocol.encoding import (
    MAX_JSON_BYTES,
    MAX_SAFE_INT,
    hash_object,
    is_hash_hex,
    is_signature_hex,
    is_version,
    only_lower_hex,
    parse_canonical,
    sha256_hex,
)
from bcfl_cli.protocol.merkle import merkle_root
from bcfl_cli.protocol.tx import PROTOCOL_VERSION, Transaction

ZERO_HASH = "0" * 64
NIL = ""  # a vote for no block
MAX_TXS_PER_BLOCK = 2_000
MAX_VALIDATORS = 256


# --- validator sets -----------------------------------------------------------------------
@dataclass(frozen=True)
class ValidatorSet:
    """Validators and voting power, sorted by did so that the hash is order-free."""

    powers: tuple[tuple[str, int], ...]

    @classmethod
    def from_mapping(cls, powers: Mapping[str, int]) -> ValidatorSet:
        return cls(tuple(sorted((d, p) for d, p in powers.items() if p > 0)))

    @cached_property
    def total_power(self) -> int:
        return sum(p for _, p in self.powers)

    @cached_property
    def _power(self) -> dict[str, int]:
        return dict(self.powers)

    def power_of(self, did: str) -> int:
        return self._power.get(did, 0)

    def has_quorum(self, power: int) -> bool:
        """More than 2/3 of the total power, in integers: 3 * power > 2 * total."""
        return 3 * power > 2 * self.total_power

    def quorum_power(self) -> int:
        """The least power that is a quorum: floor(2 * total / 3) + 1."""
        return (2 * self.total_power) // 3 + 1

    def to_list(self) -> list[dict[str, Any]]:
        return [{"did": d, "power": p} for d, p in self.powers]

    @cached_property
    def hash(self) -> str:
        return hash_object(self.to_list())

    def __len__(self) -> int:
        return len(self.powers)

    def __contains__(self, did: object) -> bool:
        return isinstance(did, str) and did in self._power


# --- votes ----------------------------------------------------------------------------------
class VoteType(enum.StrEnum):
    PREVOTE = "prevote"
    PRECOMMIT = "precommit"


@dataclass(frozen=True)
class Vote:
    chain: str
    height: int
    round: int
    type: VoteType
    block: str  # block hash, or NIL
    validator: str
    signature: str = ""

    def unsigned(self) -> dict[str, Any]:
        return {
            "v": PROTOCOL_VERSION,
            "chain": self.chain,
            "height": self.height,
            "round": self.round,
            "type": str(self.type),
            "block": self.block,
            "validator": self.validator,
        }

    @property
    def hash(self) -> str:
        text = _vote_text(self)
        return sha256_hex(text) if text is not None else hash_object(self.unsigned())

    def to_dict(self) -> dict[str, Any]:
        return {**self.unsigned(), "sig": self.signature}

    def signature_valid(self) -> bool:
        return verify_by_did(self.validator, Domain.VOTE, self.hash, self.signature)

    def signed(self, key: nacl.signing.SigningKey) -> Vote:
        if did_from_public_key(bytes(key.verify_key)) != self.validator:
            raise EncodingError("vote signed with a key that is not the validator's")
        return Vote(
            self.chain,
            self.height,
            self.round,
            self.type,
            self.block,
            self.validator,
            sign_digest(key, Domain.VOTE, self.hash),
        )

    @classmethod
    def from_dict(cls, data: Any) -> Vote:
        keys = {"v", "chain", "height", "round", "type", "block", "validator", "sig"}
        if not isinstance(data, dict) or set(data) != keys:
            raise EncodingError(f"vote fields must be exactly {sorted(keys)}")
        if not is_version(data["v"], PROTOCOL_VERSION) or not is_hash_hex(data["chain"]):
            raise EncodingError("vote version or chain invalid")
        for name in ("height", "round"):
            v = data[name]
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 2**53 - 1:
                raise EncodingError(f"vote {name} must be a non-negative integer")
        try:
            vtype = VoteType(data["type"])
        except ValueError as exc:
            raise EncodingError(f"unknown vote type {data['type']!r}") from exc
        if data["block"] != NIL and not is_hash_hex(data["block"]):
            raise EncodingError("vote block must be a block hash or empty (nil)")
        if not is_did(data["validator"]) or not is_signature_hex(data["sig"]):
            raise EncodingError("vote validator or signature malformed")
        return cls(
            data["chain"],
            data["height"],
            data["round"],
            vtype,
            data["block"],
            data["validator"],
            data["sig"],
        )


def _plain(text: object) -> bool:
    """A string that canonical JSON writes as itself between quotes."""
    return (
        isinstance(text, str)
        and text.isascii()
        and text.isprintable()
        and '"' not in text
        and "\\" not in text
    )


def _safe_int(value: object) -> bool:
    return type(value) is int and -MAX_SAFE_INT <= value <= MAX_SAFE_INT


#: RFC 8785 of a vote's unsigned form, keys in order; a property test pins it to ``canonical``.
_VOTE_TEMPLATE = (
    '{"block":"%s","chain":"%s","height":%d,"round":%d,"type":"%s","v":'
    + str(PROTOCOL_VERSION)
    + ',"validator":"%s"}'
)


def _vote_text(vote: Vote) -> bytes | None:
    """The canonical unsigned vote by template (no JSON encoder), or None when a field is
    not plain (then the caller canonicalises; every vote read from a chain is plain)."""
    kind = str(vote.type)
    if not (
        _safe_int(vote.height)
        and _safe_int(vote.round)
        and _plain(vote.chain)
        and _plain(vote.block)
        and _plain(vote.validator)
        and _plain(kind)
    ):
        return None
    values = (vote.block, vote.chain, vote.height, vote.round, kind, vote.validator)
    return (_VOTE_TEMPLATE % values).encode("ascii")


# --- commit certificates ------------------------------------------------------------------
class _WireSignature(msgspec.Struct, forbid_unknown_fields=True):
    """A certificate's signature as stored, fields in RFC 8785 order."""

    sig: Annotated[str, msgspec.Meta(min_length=128, max_length=128)]  # digits: only_lower_hex
    validator: str


class _WireCommit(msgspec.Struct, forbid_unknown_fields=True):
    """A certificate as stored, fields in RFC 8785 order (the fast path of ``from_canonical``)."""

    block: str
    height: int
    round: int
    sigs: list[_WireSignature]


_COMMIT_DECODER: msgspec.json.Decoder[_WireCommit] = msgspec.json.Decoder(_WireCommit)


_Hash64 = Annotated[str, msgspec.Meta(min_length=64, max_length=64)]  # digits: only_lower_hex
_SafeCount = Annotated[int, msgspec.Meta(ge=0, le=MAX_SAFE_INT)]


class _WireHeader(msgspec.Struct, forbid_unknown_fields=True):
    """A header as stored, fields in RFC 8785 order (the fast path of ``from_canonical``)."""

    config: _Hash64
    height: _SafeCount
    prev: _Hash64
    proposer: str
    time: _SafeCount
    tx_root: _Hash64
    v: int
    validators: _Hash64


_HEADER_DECODER: msgspec.json.Decoder[_WireHeader] = msgspec.json.Decoder(_WireHeader)
_WIRE_ENCODER = msgspec.json.Encoder()


@dataclass(frozen=True)
class CommitCertificate:
    """PRECOMMIT signatures for one block at one (height, round)."""

    height: int
    round: int
    block: str
    signatures: tuple[tuple[str, str], ...]  # (validator did, signature hex), sorted by did

    def to_dict(self) -> dict[str, Any]:
        return {
            "height": self.height,
            "round": self.round,
            "block": self.block,
            "sigs": [{"validator": d, "sig": s} for d, s in self.signatures],
        }

    @classmethod
    def from_dict(cls, data: Any) -> CommitCertificate:
        if not isinstance(data, dict) or set(data) != {"height", "round", "block", "sigs"}:
            raise EncodingError("commit certificate fields must be height, round, block, sigs")
        sigs = data["sigs"]
        if not isinstance(sigs, list) or len(sigs) > MAX_VALIDATORS:
            raise EncodingError(f"commit certificate holds at most {MAX_VALIDATORS} signatures")
        pairs: list[tuple[str, str]] = []
        for item in sigs:
            if not isinstance(item, dict) or set(item) != {"validator", "sig"}:
                raise EncodingError("commit signature must be {validator, sig}")
            if not is_did(item["validator"]) or not is_signature_hex(item["sig"]):
                raise EncodingError("commit signature validator or sig malformed")
            pairs.append((item["validator"], item["sig"]))
        return cls._checked(data["height"], data["round"], data["block"], pairs)

    @classmethod
    def _checked(
        cls, height: Any, round_: Any, block: Any, pairs: list[tuple[str, str]]
    ) -> CommitCertificate:
        """The checks of ``from_dict`` after each signature's own, in its order."""
        if [p[0] for p in pairs] != sorted({p[0] for p in pairs}):
            raise EncodingError("commit signatures must be sorted by validator, without repeats")
        for name, v in (("height", height), ("round", round_)):
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= MAX_SAFE_INT:
                raise EncodingError(f"commit {name} must be an integer in 0 .. {MAX_SAFE_INT}")
        if not is_hash_hex(block):
            raise EncodingError("commit block must be a block hash")
        return cls(height, round_, block, tuple(pairs))

    @classmethod
    def from_canonical(cls, data: str | bytes) -> CommitCertificate:
        """A certificate from its canonical bytes (refusing any other spelling).

        Fast path: decode ASCII text into the certificate's exact shape in C (msgspec) and
        encode it back; when that gives the same bytes, the text is compact JSON with its keys
        in RFC 8785 order and only ASCII strings and integers, which is RFC 8785 (the property
        ``parse_canonical``'s fast path rests on), and ``from_dict``'s field checks decide.
        Anything else, errors included, is decided by ``parse_canonical`` and ``from_dict``.
        """
        if len(data) <= MAX_JSON_BYTES and data.isascii():
            raw = data.encode("ascii") if isinstance(data, str) else data
            try:
                wire = _COMMIT_DECODER.decode(raw)
                if len(wire.sigs) <= MAX_VALIDATORS and _WIRE_ENCODER.encode(wire) == raw:
                    pairs = [(item.validator, item.sig) for item in wire.sigs]
                    # each sig has 128 characters (its shape): all hex is each is_signature_hex
                    if only_lower_hex("".join([sig for _, sig in pairs])) and all(
                        [is_did(d) for d, _ in pairs]
                    ):
                        return cls._checked(wire.height, wire.round, wire.block, pairs)
            except (msgspec.MsgspecError, EncodingError, ValueError, TypeError):
                pass
        return cls.from_dict(parse_canonical(data))

    def precommit_digests(self, chain: str) -> list[bytes]:
        """The SHA-256 each signature signs (the precommit's hash, raw), in signature order.

        Equal to ``precommit(chain, did, sig).hash``; the common part of the votes is written
        once by template when it is plain.
        """
        if not (
            _plain(chain)
            and _plain(self.block)
            and _safe_int(self.height)
            and _safe_int(self.round)
        ):
            return [bytes.fromhex(self.precommit(chain, d, s).hash) for d, s in self.signatures]
        values = (self.block, chain, self.height, self.round, str(VoteType.PRECOMMIT), "")
        prefix = hashlib.sha256((_VOTE_TEMPLATE % values)[:-2].encode("ascii"))
        dids = [did for did, _ in self.signatures]
        if _plain("".join(dids)):  # each character plain, so each did (one check, not seven)
            out = []
            for did in dids:
                vote = prefix.copy()
                vote.update(did.encode("ascii") + b'"}')
                out.append(vote.digest())
            return out
        out = []
        for did, sig in self.signatures:
            if _plain(did):
                vote = prefix.copy()
                vote.update(did.encode("ascii") + b'"}')
                out.append(vote.digest())
            else:
                out.append(bytes.fromhex(self.precommit(chain, did, sig).hash))
        return out

    def precommit(self, chain: str, validator: str, signature: str) -> Vote:
        return Vote(
            chain, self.height, self.round, VoteType.PRECOMMIT, self.block, validator, signature
        )

    def signed_power(self, chain: str, validators: ValidatorSet) -> int:
        """Voting power of the distinct validators in ``validators`` whose signature is valid."""
        power = 0
        for did, sig in self.signatures:
            p = validators.power_of(did)
            if p and self.precommit(chain, did, sig).signature_valid():
                power += p
        return power

    @classmethod
    def from_votes(cls, votes: Iterable[Vote]) -> CommitCertificate:
        votes = list(votes)
        if not votes:
            raise EncodingError("a commit certificate needs at least one precommit")
        first = votes[0]
        by_did: dict[str, str] = {}
        for v in votes:
            if (v.height, v.round, v.block, v.type) != (
                first.height,
                first.round,
                first.block,
                VoteType.PRECOMMIT,
            ):
                raise EncodingError("precommits of a certificate must agree on height/round/block")
            by_did[v.validator] = v.signature
        return cls(first.height, first.round, first.block, tuple(sorted(by_did.items())))


# --- blocks ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class BlockHeader:
    height: int
    prev: str
    time: int
    proposer: str  # did; "" for genesis
    tx_root: str
    validators: str  # hash of the validator set in force at this height
    config: str  # hash of the genesis config document (constant along the chain)

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": PROTOCOL_VERSION,
            "height": self.height,
            "prev": self.prev,
            "time": self.time,
            "proposer": self.proposer,
            "tx_root": self.tx_root,
            "validators": self.validators,
            "config": self.config,
        }

    @cached_property
    def hash(self) -> str:
        """Computed once: every field is an immutable int or string."""
        return hash_object(self.to_dict())

    @classmethod
    def from_canonical(cls, data: str | bytes) -> BlockHeader:
        """A header from its canonical bytes (refusing any other spelling); the hash is theirs.

        Fast path as for certificates: msgspec decodes ASCII text into the header's exact
        shape and encodes it back; the same bytes mean RFC 8785 text, and ``from_dict``'s
        checks decide (``_from_wire``: on the decoded shape, the hashes' digits in one call).
        Anything else is decided by ``parse_canonical`` and ``from_dict``.
        """
        raw = data.encode("utf-8") if isinstance(data, str) else data
        header = None
        if len(raw) <= MAX_JSON_BYTES and raw.isascii():
            try:
                wire = _HEADER_DECODER.decode(raw)
                if _WIRE_ENCODER.encode(wire) == raw:
                    header = cls._from_wire(wire)
            except (msgspec.MsgspecError, EncodingError, ValueError, TypeError):
                header = None
        if header is None:
            header = cls.from_dict(parse_canonical(data))
        header.__dict__["hash"] = sha256_hex(raw)
        return header

    @classmethod
    def _from_wire(cls, wire: _WireHeader) -> BlockHeader | None:
        """``from_dict``'s checks on a decoded header whose shape bounds the integers and the
        hashes' lengths; None where ``from_dict`` would refuse it (which then says why)."""
        proposer = wire.proposer
        if (
            wire.v == PROTOCOL_VERSION
            and only_lower_hex(wire.prev + wire.tx_root + wire.validators + wire.config)
            and ((proposer == "" and wire.height == 0) or is_did(proposer))
        ):
            return cls(
                wire.height,
                wire.prev,
                wire.time,
                proposer,
                wire.tx_root,
                wire.validators,
                wire.config,
            )
        return None

    @classmethod
    def from_dict(cls, data: Any) -> BlockHeader:
        keys = {"v", "height", "prev", "time", "proposer", "tx_root", "validators", "config"}
        if not isinstance(data, dict) or set(data) != keys:
            raise EncodingError(f"block header fields must be exactly {sorted(keys)}")
        if not is_version(data["v"], PROTOCOL_VERSION):
            raise EncodingError(f"unsupported block version {data['v']!r}")
        for name in ("height", "time"):
            v = data[name]
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 2**53 - 1:
                raise EncodingError(f"block {name} must be a non-negative integer")
        for name in ("prev", "tx_root", "validators", "config"):
            if not is_hash_hex(data[name]):
                raise EncodingError(f"block {name} must be a SHA-256 hex hash")
        proposer = data["proposer"]
        if not (proposer == "" and data["height"] == 0) and not is_did(proposer):
            raise EncodingError("block proposer must be a did:key (empty only at genesis)")
        return cls(
            data["height"],
            data["prev"],
            data["time"],
            proposer,
            data["tx_root"],
            data["validators"],
            data["config"],
        )


@dataclass(frozen=True)
class Block:
    header: BlockHeader
    txs: tuple[Transaction, ...] = field(default_factory=tuple)
    commit: CommitCertificate | None = None

    @property
    def hash(self) -> str:
        return self.header.hash

    @property
    def height(self) -> int:
        return self.header.height

    def computed_tx_root(self) -> str:
        return merkle_root([t.hash for t in self.txs])

    def to_dict(self) -> dict[str, Any]:
        return {
            "header": self.header.to_dict(),
            "txs": [t.to_dict() for t in self.txs],
            "commit": self.commit.to_dict() if self.commit else None,
        }

    @classmethod
    def from_dict(cls, data: Any) -> Block:
        if not isinstance(data, dict) or set(data) != {"header", "txs", "commit"}:
            raise EncodingError("a block is an object {header, txs, commit}")
        if not isinstance(data["txs"], list) or len(data["txs"]) > MAX_TXS_PER_BLOCK:
            raise EncodingError(f"a block holds a list of at most {MAX_TXS_PER_BLOCK} transactions")
        commit = None if data["commit"] is None else CommitCertificate.from_dict(data["commit"])
        return cls(
            BlockHeader.from_dict(data["header"]),
            tuple(Transaction.from_dict(t) for t in data["txs"]),
            commit,
        )
