"""The consortium file (TOML) and the genesis document it becomes.

The TOML file and the genesis document have one shape, so one validator serves both: the
document only adds ``v`` and ``initial_model`` and writes floats as decimal strings. Errors name
the key path (``members[1].did``) and the file, because a founder edits this file by hand.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from bcfl_cli.chain.config import (
    DEFAULT_JOIN_REQUEST_TTL_BLOCKS,
    DEFAULT_MAX_PENDING_JOINS,
    MAX_JOIN_REQUEST_TTL_BLOCKS,
    MAX_MAX_PENDING_JOINS,
    MAX_MEMBERS,
)
from bcfl_cli.errors import EncodingError, UsageError
from bcfl_cli.protocol.block import MAX_VALIDATORS
from bcfl_cli.protocol.crypto import Domain, public_key_from_did, verify_digest
from bcfl_cli.protocol.encoding import canonical, is_hash_hex
from bcfl_cli.protocol.spec import (
    MODEL_SECTION_TAGS,
    AggregationSpec,
    AppModelSpec,
    ContractRules,
    ModelSection,
    ModelSpec,
    TrainingPlan,
)

DOCUMENT_VERSION = 1
MAX_CONFIG_BYTES = 1024 * 1024
MAX_POWER = 1_000_000
#: BFT: with n equal validators, n = 3f + 1 tolerates f faults; fewer than 4 tolerate none.
MIN_FAULT_TOLERANT_VALIDATORS = 4
MEMBER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")

Role = Literal["trainer", "validator"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsPin(_Strict):
    """A member's node certificate pinned in the genesis: its SHA-256 fingerprint and the
    member's did-key signature of it (``bcfl tls init`` prints both, ready to paste)."""

    fingerprint: str
    sig: str

    @field_validator("fingerprint")
    @classmethod
    def _fingerprint(cls, value: str) -> str:
        if not is_hash_hex(value):
            raise ValueError("expected the SHA-256 fingerprint in lowercase hex (64 characters)")
        return value


class MemberSpec(_Strict):
    name: str
    did: str
    roles: list[Role] = Field(min_length=1, max_length=2)
    power: int = Field(ge=0, le=MAX_POWER)
    tls: TlsPin | None = None

    @model_validator(mode="before")
    @classmethod
    def _default_power(cls, data: Any) -> Any:
        """A validator votes with power 1 unless the file says otherwise; anyone else has 0."""
        if isinstance(data, dict) and "power" not in data:
            roles = data.get("roles")
            voting = isinstance(roles, list) and "validator" in roles
            return {**data, "power": 1 if voting else 0}
        return data

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not MEMBER_NAME_RE.match(value):
            raise ValueError("1-64 characters of letters, digits, '.', '_' or '-'")
        return value

    @field_validator("did")
    @classmethod
    def _did(cls, value: str) -> str:
        try:
            public_key_from_did(value)
        except EncodingError as exc:
            reason = " (expected did:key:z6Mk...)"
            if "prime order" in exc.message:
                reason = (
                    ": its public key is not of prime order (a small-order or mixed-order point)"
                )
            raise ValueError("not an Ed25519 did:key" + reason) from exc
        return value

    @field_validator("roles")
    @classmethod
    def _roles(cls, value: list[Role]) -> list[Role]:
        if len(set(value)) != len(value):
            raise ValueError("roles listed twice")
        return sorted(value)

    @model_validator(mode="after")
    def _pin_signed(self) -> MemberSpec:
        if self.tls is not None and not verify_digest(
            public_key_from_did(self.did), Domain.TLS_PIN, self.tls.fingerprint, self.tls.sig
        ):
            raise ValueError("tls.sig: not this member's signature of tls.fingerprint")
        return self

    @property
    def is_validator(self) -> bool:
        return "validator" in self.roles

    @property
    def is_trainer(self) -> bool:
        return "trainer" in self.roles

    def to_document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "name": self.name,
            "did": self.did,
            "roles": list(self.roles),
            "power": self.power,
        }
        if self.tls is not None:  # absent: the document (and its hash) as before issue 22
            doc["tls"] = {"fingerprint": self.tls.fingerprint, "sig": self.tls.sig}
        return doc


class _ConsortiumSection(_Strict):
    name: str = Field(min_length=1, max_length=128)
    admission_approvals: int = Field(ge=1, le=MAX_VALIDATORS)
    removal_approvals: int = Field(ge=1, le=MAX_VALIDATORS)
    join_request_ttl_blocks: int = Field(
        default=DEFAULT_JOIN_REQUEST_TTL_BLOCKS, ge=1, le=MAX_JOIN_REQUEST_TTL_BLOCKS
    )
    max_pending_joins: int = Field(
        default=DEFAULT_MAX_PENDING_JOINS, ge=1, le=MAX_MAX_PENDING_JOINS
    )
    #: how nodes trust each other's certificates (issue 22); None: no rule (plain or a proxy)
    tls: Literal["pinned", "ca"] | None = None

    @field_validator("name")
    @classmethod
    def _printable(cls, value: str) -> str:
        if not value.isprintable() or value != value.strip():
            raise ValueError("must be printable, without leading or trailing spaces")
        return value


class _FileShape(_Strict):
    """The TOML file, and (with ``v`` and ``initial_model``) the genesis document."""

    consortium: _ConsortiumSection
    members: list[MemberSpec] = Field(max_length=MAX_MEMBERS)
    model: ModelSection
    training: TrainingPlan = Field(default_factory=TrainingPlan)
    contract: ContractRules = Field(default_factory=ContractRules)
    aggregation: AggregationSpec = Field(default_factory=AggregationSpec)


class ConsortiumConfig(_Strict):
    name: str
    admission_approvals: int
    removal_approvals: int
    join_request_ttl_blocks: int = DEFAULT_JOIN_REQUEST_TTL_BLOCKS
    max_pending_joins: int = DEFAULT_MAX_PENDING_JOINS
    tls: Literal["pinned", "ca"] | None = None
    members: list[MemberSpec]
    model: ModelSpec | AppModelSpec
    training: TrainingPlan
    contract: ContractRules
    aggregation: AggregationSpec

    @property
    def validators(self) -> list[MemberSpec]:
        return [m for m in self.members if m.is_validator]

    @property
    def trainers(self) -> list[MemberSpec]:
        return [m for m in self.members if m.is_trainer]

    def member(self, did: str) -> MemberSpec | None:
        return next((m for m in self.members if m.did == did), None)

    def to_document(self, initial_model: str) -> dict[str, Any]:
        """The genesis document: canonical-JSON ready, no floats (PROTOCOL.md, genesis)."""
        if not is_hash_hex(initial_model):
            raise EncodingError(f"initial_model must be a SHA-256 hex hash, got {initial_model!r}")
        consortium: dict[str, Any] = {
            "name": self.name,
            "admission_approvals": self.admission_approvals,
            "removal_approvals": self.removal_approvals,
        }
        # Stated only when not the default, so genesis documents from before the rule (and
        # files that leave it out) keep their hash.
        if self.join_request_ttl_blocks != DEFAULT_JOIN_REQUEST_TTL_BLOCKS:
            consortium["join_request_ttl_blocks"] = self.join_request_ttl_blocks
        if self.max_pending_joins != DEFAULT_MAX_PENDING_JOINS:
            consortium["max_pending_joins"] = self.max_pending_joins
        if self.tls is not None:
            consortium["tls"] = self.tls
        return {
            "v": DOCUMENT_VERSION,
            "consortium": consortium,
            "members": [m.to_document() for m in self.members],
            "model": self.model.to_document(),
            "training": self.training.to_document(),
            "contract": self.contract.to_document(),
            "aggregation": self.aggregation.to_document(),
            "initial_model": initial_model,
        }

    def warnings(self) -> list[str]:
        """Legal but risky choices, shown by ``bcfl init`` without refusing the file."""
        found: list[str] = []
        unpinned = [m.name for m in self.members if m.tls is None]
        if self.tls == "pinned" and unpinned:
            found.append(
                "consortium.tls = pinned but no certificate is pinned for "
                + ", ".join(unpinned)
                + ": their nodes can serve plain HTTP on loopback only (run `bcfl tls init`)"
            )
        powers = [m.power for m in self.validators]
        total, quorum = sum(powers), (2 * sum(powers)) // 3 + 1
        # BFT: the chain stalls once the validators still up hold no quorum; with equal powers
        # that is every n < 4 (n = 3: quorum 3 of 3), with unequal ones a heavy validator.
        if powers and total - max(powers) < quorum:
            n = len(powers)
            unit = "" if len(set(powers)) == 1 and powers[0] == 1 else " power"
            found.append(
                f"n={n} validator{'s' if n != 1 else ''} tolerate no fault: quorum is "
                f"{quorum} of {total}{unit}; one validator down stops the chain "
                f"(use at least {MIN_FAULT_TOLERANT_VALIDATORS} equal validators)"
            )
        if self.training.min_updates > len(self.trainers):
            found.append(
                f"training.min_updates = {self.training.min_updates} but only "
                f"{len(self.trainers)} trainer(s): rounds close only at the deadline"
            )
        if self.aggregation.rule == "krum":
            need = 2 * self.aggregation.krum_f + 3
            if self.training.min_updates < need:
                found.append(
                    f"aggregation.krum_f = {self.aggregation.krum_f} needs at least {need} "
                    f"updates a round, training.min_updates is {self.training.min_updates}"
                )
        return found


def _location(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if part in MODEL_SECTION_TAGS:
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _first_errors(exc: ValidationError, limit: int = 3) -> str:
    parts: list[str] = []
    for err in exc.errors(include_url=False)[:limit]:
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "missing"
        where = _location(tuple(err["loc"]))
        parts.append(f"{where}: {msg}" if where else msg)
    more = exc.error_count() - limit
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def _cross_checks(shape: _FileShape) -> None:
    """Rules spanning several keys; each message names the key to change."""
    seen_names: dict[str, int] = {}
    seen_dids: dict[str, int] = {}
    seen_pins: dict[str, int] = {}
    for i, member in enumerate(shape.members):
        if member.name in seen_names:
            raise ValueError(
                f"members[{i}].name: {member.name!r} repeats members[{seen_names[member.name]}]"
            )
        if member.did in seen_dids:
            raise ValueError(
                f"members[{i}].did: repeats the did of members[{seen_dids[member.did]}]"
            )
        seen_names[member.name] = i
        seen_dids[member.did] = i
        if member.tls is not None:
            if member.tls.fingerprint in seen_pins:
                first = seen_pins[member.tls.fingerprint]
                raise ValueError(f"members[{i}].tls: the certificate of members[{first}]")
            seen_pins[member.tls.fingerprint] = i
        if member.is_validator and member.power < 1:
            raise ValueError(f"members[{i}].power: a validator needs power >= 1")
        if not member.is_validator and member.power != 0:
            raise ValueError(
                f"members[{i}].power: only validators vote; set power = 0 or add the validator role"
            )
    validators = [m for m in shape.members if m.is_validator]
    if not validators:
        raise ValueError("members: no member has the validator role; the chain could never commit")
    if len(validators) > MAX_VALIDATORS:
        raise ValueError(f"members: more than {MAX_VALIDATORS} validators")
    for key in ("admission_approvals", "removal_approvals"):
        wanted = getattr(shape.consortium, key)
        if wanted > len(validators):
            raise ValueError(
                f"consortium.{key}: {wanted} approvals but only {len(validators)} validator(s)"
            )


def _from_shape(shape: _FileShape) -> ConsortiumConfig:
    return ConsortiumConfig(
        name=shape.consortium.name,
        admission_approvals=shape.consortium.admission_approvals,
        removal_approvals=shape.consortium.removal_approvals,
        join_request_ttl_blocks=shape.consortium.join_request_ttl_blocks,
        max_pending_joins=shape.consortium.max_pending_joins,
        tls=shape.consortium.tls,
        members=shape.members,
        model=shape.model,
        training=shape.training,
        contract=shape.contract,
        aggregation=shape.aggregation,
    )


def parse_config(data: Any, source: str) -> ConsortiumConfig:
    """Validate the file's tables; a UsageError names ``source`` and the offending key."""
    try:
        shape = _FileShape.model_validate(data)
        _cross_checks(shape)
    except ValidationError as exc:
        raise UsageError(f"{source}: {_first_errors(exc)}") from exc
    except ValueError as exc:
        raise UsageError(f"{source}: {exc}") from exc
    return _from_shape(shape)


def load_config(path: Path) -> ConsortiumConfig:
    """Read and validate a consortium TOML file."""
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"cannot read consortium file {path}: {exc.strerror}") from exc
    if len(raw) > MAX_CONFIG_BYTES:
        raise UsageError(f"{path.name}: larger than {MAX_CONFIG_BYTES} bytes")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path.name}: not UTF-8 text") from exc
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path.name}: invalid TOML: {exc}") from exc
    return parse_config(data, path.name)


def genesis_config_from_document(document: Any) -> tuple[ConsortiumConfig, str]:
    """Parse a genesis document (possibly from a peer) back into (config, initial_model).

    Only the canonical document is accepted: re-encoding the parsed config must give back the
    same bytes, so no two documents that differ in spelling can describe one consortium.
    """
    if not isinstance(document, dict):
        raise EncodingError("genesis document must be a JSON object")
    if document.get("v") != DOCUMENT_VERSION:
        raise EncodingError(f"unsupported genesis document version {document.get('v')!r}")
    initial_model = document.get("initial_model")
    if not is_hash_hex(initial_model):
        raise EncodingError("genesis document initial_model must be a SHA-256 hex hash")
    body = {k: v for k, v in document.items() if k not in ("v", "initial_model")}
    try:
        config = parse_config(body, "genesis document")
    except UsageError as exc:
        raise EncodingError(exc.message) from exc
    assert isinstance(initial_model, str)
    if isinstance(config.model, AppModelSpec) and config.model.app.initial_model != initial_model:
        raise EncodingError("genesis document: model.app.initial_model differs from initial_model")
    if canonical(config.to_document(initial_model)) != canonical(document):
        raise EncodingError("genesis document is not in canonical form")
    return config, initial_model
