"""The genesis document read as the rules' parameters (docs/PROTOCOL.md §6.1).

Parsed here with the FL specs (pydantic, no torch), so that the chain rules and the FL engine
read the same numbers out of the same signed document.

``bcfl_cli.consortium.config`` parses the same shape for people (the TOML file, errors naming
the key, the canonical round trip a joiner checks); it is stricter (name syntax, power bounds,
approvals at most the validators) and imports its shared limits from here, so every document
``bcfl init`` or ``bcfl join`` accepts is one this parser accepts. This parser stays separate
because the chain must not depend on the consortium package (TOML, UsageError for people), and
it must keep accepting every genesis already pinned by a ledger.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from bcfl_cli.errors import EncodingError, VerificationError
from bcfl_cli.protocol.crypto import Domain, is_did, public_key_from_did, verify_digest
from bcfl_cli.protocol.encoding import canonical, is_hash_hex, is_version
from bcfl_cli.protocol.spec import (
    MODEL_SECTION,
    MODEL_SECTION_TAGS,
    AggregationSpec,
    AppModelSpec,
    ContractRules,
    ModelSpec,
    TrainingPlan,
)
from bcfl_cli.protocol.tx import PROTOCOL_VERSION, ROLES

DOCUMENT_KEYS = frozenset(
    {
        "v",
        "consortium",
        "members",
        "model",
        "training",
        "contract",
        "aggregation",
        "initial_model",
    }
)
MAX_MEMBERS = 1_000
CONSORTIUM_KEYS = frozenset({"name", "admission_approvals", "removal_approvals"})
#: A join request not admitted within this many blocks is dropped (PROTOCOL.md §6.3). The
#: genesis document states ``consortium.join_request_ttl_blocks`` only when it differs, so
#: documents written before the rule existed keep their hash.
DEFAULT_JOIN_REQUEST_TTL_BLOCKS = 100_000
MAX_JOIN_REQUEST_TTL_BLOCKS = 100_000_000
#: At most this many join requests are pending at once, consortium-wide (PROTOCOL.md §6.3): a
#: stranger's requests cost every member memory and replay time, so their number is a chain
#: rule, not a node's choice. Stated in the genesis (``consortium.max_pending_joins``) only when
#: it differs, like the TTL, so older documents keep their hash.
DEFAULT_MAX_PENDING_JOINS = 1_000
MAX_MAX_PENDING_JOINS = 1_000_000
#: ``consortium.tls`` (issue 22): how nodes trust each other's TLS certificates, ``pinned`` (each
#: member's certificate fingerprint on chain) or ``ca``; absent in documents from before TLS
#: (their hash is unchanged) and for consortia that leave transport security to a proxy.
OPTIONAL_CONSORTIUM_KEYS = frozenset({"join_request_ttl_blocks", "max_pending_joins", "tls"})
TLS_MODES = ("pinned", "ca")
MEMBER_KEYS = frozenset({"name", "did", "roles", "power"})
#: ``members[i].tls``: ``{fingerprint, sig}``, the SHA-256 of the member's node certificate and
#: the member's did-key signature of it under ``bcfl/tls-pin/v1``; optional.
MEMBER_TLS_KEYS = frozenset({"fingerprint", "sig"})


@dataclass(frozen=True)
class GenesisMember:
    name: str
    did: str
    roles: tuple[str, ...]
    power: int
    tls: str | None = None  # pinned certificate fingerprint (issue 22)


@dataclass(frozen=True)
class GenesisConfig:
    name: str
    admission_approvals: int
    removal_approvals: int
    members: tuple[GenesisMember, ...]
    model: ModelSpec | AppModelSpec
    training: TrainingPlan
    contract: ContractRules
    aggregation: AggregationSpec
    #: the aggregation section exactly as signed; an aggregate's rule and params must match it
    aggregation_document: dict[str, Any]
    initial_model: str
    join_request_ttl_blocks: int = DEFAULT_JOIN_REQUEST_TTL_BLOCKS
    max_pending_joins: int = DEFAULT_MAX_PENDING_JOINS
    tls_mode: str | None = None  # "pinned" | "ca" | None (no TLS rule: before issue 22)

    @property
    def aggregation_rule(self) -> str:
        return str(self.aggregation_document["rule"])

    @property
    def aggregation_params(self) -> dict[str, Any]:
        return {k: v for k, v in self.aggregation_document.items() if k != "rule"}


def _bad(message: str) -> VerificationError:
    return VerificationError(f"genesis document: {message}", height=0, code="bad_genesis_document")


def _positive_int(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise _bad(f"{where} must be a positive integer, found {value!r}")
    return value


def _optional_int(consortium: dict[str, Any], key: str, default: int, most: int) -> int:
    """An optional ``consortium`` number: 1..``most``, and absent when it is the default (so
    one consortium has one document, and documents from before the key keep their hash)."""
    if key not in consortium:
        return default
    value = _positive_int(consortium[key], f"consortium.{key}")
    if value == default or value > most:
        raise _bad(
            f"consortium.{key} must be 1-{most} and is omitted when it is the default {default}"
        )
    return value


def parse_document(document: Any) -> GenesisConfig:
    """Validate the genesis document's structure; every fault is a VerificationError at 0."""
    if not isinstance(document, dict) or set(document) != DOCUMENT_KEYS:
        found = sorted(document) if isinstance(document, dict) else type(document).__name__
        raise _bad(f"fields must be exactly {sorted(DOCUMENT_KEYS)}, found {found}")
    try:
        canonical(document)
    except EncodingError as exc:
        raise _bad(exc.message) from exc
    if not is_version(document["v"], PROTOCOL_VERSION):
        raise _bad(f"version must be {PROTOCOL_VERSION}, found {document['v']!r}")
    consortium = document["consortium"]
    if not isinstance(consortium, dict) or not (
        CONSORTIUM_KEYS <= set(consortium) <= CONSORTIUM_KEYS | OPTIONAL_CONSORTIUM_KEYS
    ):
        raise _bad(
            "consortium must be {name, admission_approvals, removal_approvals} and optionally "
            "join_request_ttl_blocks, max_pending_joins and tls"
        )
    tls_mode = consortium.get("tls")
    if tls_mode is not None and tls_mode not in TLS_MODES:
        raise _bad(f"consortium.tls must be one of {list(TLS_MODES)}, found {tls_mode!r}")
    ttl = _optional_int(
        consortium,
        "join_request_ttl_blocks",
        DEFAULT_JOIN_REQUEST_TTL_BLOCKS,
        MAX_JOIN_REQUEST_TTL_BLOCKS,
    )
    max_pending_joins = _optional_int(
        consortium, "max_pending_joins", DEFAULT_MAX_PENDING_JOINS, MAX_MAX_PENDING_JOINS
    )
    name = consortium["name"]
    if not isinstance(name, str) or not 1 <= len(name) <= 128:
        raise _bad("consortium.name must be a string of 1-128 characters")
    members = document["members"]
    if not isinstance(members, list) or not 1 <= len(members) <= MAX_MEMBERS:
        raise _bad(f"members must be a list of 1-{MAX_MEMBERS} entries")
    parsed: list[GenesisMember] = []
    for i, m in enumerate(members):
        if not isinstance(m, dict) or not MEMBER_KEYS <= set(m) <= MEMBER_KEYS | {"tls"}:
            raise _bad(f"members[{i}] must be {{name, did, roles, power}} and optionally tls")
        roles = m["roles"]
        power = m["power"]
        if not isinstance(m["name"], str) or not 1 <= len(m["name"]) <= 64:
            raise _bad(f"members[{i}].name must be a string of 1-64 characters")
        if not is_did(m["did"]):
            raise _bad(f"members[{i}].did is not an Ed25519 did:key")
        if (
            not isinstance(roles, list)
            or not roles
            or any(r not in ROLES for r in roles)
            or roles != sorted(set(roles))
        ):
            raise _bad(f"members[{i}].roles must be a sorted subset of {list(ROLES)}")
        if not isinstance(power, int) or isinstance(power, bool) or power < 0:
            raise _bad(f"members[{i}].power must be a non-negative integer")
        pin = _member_pin(m, i) if "tls" in m else None
        parsed.append(GenesisMember(m["name"], m["did"], tuple(roles), power, pin))
    if len({m.did for m in parsed}) != len(parsed) or len({m.name for m in parsed}) != len(parsed):
        raise _bad("member dids and names must be unique")
    pins = [m.tls for m in parsed if m.tls is not None]
    if len(set(pins)) != len(pins):
        raise _bad("two members pin the same TLS certificate")
    if not any("validator" in m.roles and m.power > 0 for m in parsed):
        raise _bad("at least one member must be a validator with power > 0")
    if not is_hash_hex(document["initial_model"]):
        raise _bad("initial_model must be a SHA-256 hex hash")
    aggregation = document["aggregation"]
    if not isinstance(aggregation, dict) or not isinstance(aggregation.get("rule"), str):
        raise _bad("aggregation must be an object with a rule")
    try:
        model = MODEL_SECTION.validate_python(document["model"])
        training = TrainingPlan.model_validate(document["training"])
        contract = ContractRules.model_validate(document["contract"])
        agg = AggregationSpec.model_validate(aggregation)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"] if p not in MODEL_SECTION_TAGS)
        raise _bad(f"{where}: {first['msg']}") from exc
    if isinstance(model, AppModelSpec) and model.app.initial_model != document["initial_model"]:
        raise _bad("model.app.initial_model must equal initial_model")
    return GenesisConfig(
        name=name,
        admission_approvals=_positive_int(
            consortium["admission_approvals"], "consortium.admission_approvals"
        ),
        removal_approvals=_positive_int(
            consortium["removal_approvals"], "consortium.removal_approvals"
        ),
        members=tuple(parsed),
        model=model,
        training=training,
        contract=contract,
        aggregation=agg,
        aggregation_document=dict(aggregation),
        initial_model=document["initial_model"],
        join_request_ttl_blocks=ttl,
        max_pending_joins=max_pending_joins,
        tls_mode=tls_mode,
    )


def _member_pin(member: dict[str, Any], i: int) -> str:
    """``members[i].tls``: a fingerprint the member itself signed (a founder cannot pin a
    certificate of its choosing on someone else's behalf)."""
    tls = member["tls"]
    if not isinstance(tls, dict) or set(tls) != MEMBER_TLS_KEYS:
        raise _bad(f"members[{i}].tls must be {{fingerprint, sig}}")
    fingerprint, sig = tls["fingerprint"], tls["sig"]
    if not is_hash_hex(fingerprint) or not isinstance(sig, str):
        raise _bad(f"members[{i}].tls.fingerprint must be a SHA-256 hex hash")
    if not verify_digest(public_key_from_did(member["did"]), Domain.TLS_PIN, fingerprint, sig):
        raise _bad(f"members[{i}].tls.sig is not the member's signature of its fingerprint")
    return str(fingerprint)
