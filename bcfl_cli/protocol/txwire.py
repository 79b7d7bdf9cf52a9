"""A stored transaction read in C: the fast path of ``Transaction.from_canonical``.

verify-chain reads every transaction of the chain, and the structural checks of
``Transaction.from_dict`` and ``validate_body`` (hex and name patterns, bounds, two dicts and
two frozen values a transaction) were its largest share of Python after the signatures. Here
msgspec decodes the signed form into its exact shape, with the same patterns and bounds as
``Meta`` constraints, and encodes it back: equal bytes prove the text is RFC 8785 (as for
``parse_canonical``'s fast path: ASCII text, safe integers, no floats; a duplicate key, an
escape, whitespace or a ``\\u`` spelling re-encode differently).

The one rule this module keeps: **it may only accept what the exact path accepts, with the same
value** (``decode_stored`` returns ``None`` for anything else, and the exact path then decides,
so errors and their messages are the exact path's). A property test holds it to that on valid,
mutated and hostile text. Patterns end in ``\\Z``: msgspec applies them with ``re.search``,
and ``$`` would also match before a final newline. Only the kinds a chain is made of
(``open_round``, ``update``, ``validation``, ``aggregate``) have a fast shape; the others,
rare, always take the exact path.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Annotated, Any, Generic, Literal, TypeVar

import msgspec

from bcfl_cli.protocol.crypto import is_did
from bcfl_cli.protocol.encoding import MAX_JSON_BYTES, only_lower_hex
from bcfl_cli.protocol.txbodies import (
    AggregateBody,
    OpenRoundBody,
    TxBody,
    TxKind,
    UpdateBody,
    ValidationBody,
)

_MAX_SAFE = 2**53 - 1
#: Fixed-form hex fields: their length here, their digits checked together by
#: ``only_lower_hex`` (one C call a transaction instead of one regex a field).
_Hash = Annotated[str, msgspec.Meta(min_length=64, max_length=64)]
_Signature = Annotated[str, msgspec.Meta(min_length=128, max_length=128)]
_Nonce = Annotated[str, msgspec.Meta(min_length=32, max_length=32)]
#: ``txbodies._CODE`` and ``txbodies._DECIMAL``, the same text.
_Code = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,63}\Z")]
_Decimal = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^-?(0|[1-9][0-9]{0,30})(\.[0-9]{1,30})?([eE][-+]?[0-9]{1,3})?\Z|^(nan|inf|-inf)\Z"
    ),
]
_Time = Annotated[int, msgspec.Meta(ge=0, le=_MAX_SAFE)]
_Count = Annotated[int, msgspec.Meta(ge=0, le=_MAX_SAFE)]
_Positive = Annotated[int, msgspec.Meta(ge=1, le=_MAX_SAFE)]
#: ``_str(0, 512)``: printable. Only printable ASCII here (for ASCII, ``str.isprintable`` is
#: exactly 0x20-0x7e); any other detail takes the exact path.
_Detail = Annotated[str, msgspec.Meta(max_length=512, pattern=r"^[\x20-\x7e]*\Z")]
_Param = (
    Annotated[str, msgspec.Meta(max_length=64)]
    | Annotated[int, msgspec.Meta(ge=-_MAX_SAFE, le=_MAX_SAFE)]
)


class _Wire(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Fields are declared in RFC 8785 order, so that encoding one back gives canonical text
    (``kw_only`` lets an optional field stand where its name sorts)."""

    def plain(self) -> dict[str, Any]:
        """The body as the exact path's dict: the same keys, in the same (sorted) order."""
        return msgspec.structs.asdict(self)


class _OpenRound(_Wire, kw_only=True):
    base_model: _Hash
    deadline_height: _Count
    deadline_time: _Positive | None = None  # left out of the text when absent
    round: _Positive

    def hex_text(self) -> str:
        return self.base_model

    def typed(self) -> TxBody:
        return OpenRoundBody(self.round, self.base_model, self.deadline_height, self.deadline_time)

    def plain(self) -> dict[str, Any]:
        plain = msgspec.structs.asdict(self)
        if self.deadline_time is None:
            del plain["deadline_time"]  # an absent optional field is no key
        return plain


class _Update(_Wire):
    base_model: _Hash
    blob: _Hash
    blob_size: _Positive
    metrics: Annotated[dict[_Code, _Decimal], msgspec.Meta(max_length=32)]
    num_samples: _Positive
    round: _Positive

    def hex_text(self) -> str:
        return self.base_model + self.blob

    def typed(self) -> TxBody:
        return UpdateBody(
            self.round,
            self.base_model,
            self.blob,
            self.blob_size,
            self.num_samples,
            MappingProxyType(dict(self.metrics)),
        )


class _Validation(_Wire):
    detail: _Detail
    reason: _Code
    update: _Hash
    verdict: Literal["accept", "reject"]

    def hex_text(self) -> str:
        return self.update

    def typed(self) -> TxBody:
        return ValidationBody(self.update, self.verdict, self.reason, self.detail)


class _Aggregate(_Wire):
    model: _Hash
    model_size: _Positive
    params: Annotated[dict[_Code, _Param], msgspec.Meta(max_length=32)]
    round: _Positive
    rule: _Code
    updates: Annotated[list[_Hash], msgspec.Meta(max_length=10_000)]

    def hex_text(self) -> str:
        if len(set(self.updates)) != len(self.updates):
            return "repeated"  # not hex: the exact path refuses a repeated update
        return self.model + "".join(self.updates)

    def typed(self) -> TxBody:
        return AggregateBody(
            self.round,
            tuple(self.updates),
            self.rule,
            MappingProxyType(dict(self.params)),
            self.model,
            self.model_size,
        )


#: The four body shapes; each has ``hex_text`` (every fixed-form hex field, joined: their
#: lengths are checked apart) and ``typed`` (the exact path's body object).
_AnyBody = _OpenRound | _Update | _Validation | _Aggregate
_Body = TypeVar("_Body", _OpenRound, _Update, _Validation, _Aggregate)


class _Unsigned(msgspec.Struct, Generic[_Body], forbid_unknown_fields=True):
    author: str
    body: _Body
    chain: _Hash
    kind: str
    nonce: _Nonce
    time: _Time
    v: Literal[1]


class _Signed(msgspec.Struct, Generic[_Body], forbid_unknown_fields=True):
    sig: _Signature
    tx: _Unsigned[_Body]


#: One decoder a kind, into the whole signed form: one decode and one encode a transaction
#: (a first decode with the body left raw, then the body's own, cost ~1 us more).
_DECODERS: dict[bytes, tuple[TxKind, msgspec.json.Decoder[Any]]] = {
    str(kind).encode(): (kind, msgspec.json.Decoder(_Signed[shape]))  # type: ignore[valid-type]
    for kind, shape in (
        (TxKind.OPEN_ROUND, _OpenRound),
        (TxKind.UPDATE, _Update),
        (TxKind.VALIDATION, _Validation),
        (TxKind.AGGREGATE, _Aggregate),
    )
}
_ENCODER = msgspec.json.Encoder(order="sorted")  # dict keys sorted: RFC 8785 order for ASCII
#: The last ``"kind":"`` of a canonical transaction is its own: ``kind`` sorts after ``body``
#: (which may hold such a key) and only ``nonce``, ``time`` and ``v`` follow it.
_KIND_KEY = b'"kind":"'


#: What the fast path read: a ``Transaction``'s fields in its order (chain, kind, author,
#: nonce, time, body as the dict that is hashed, signature), then the typed body.
StoredTx = tuple[str, TxKind, str, str, int, dict[str, Any], str, TxBody]


def decode_stored(raw: bytes) -> StoredTx | None:
    """The transaction ``raw`` holds when the fast path can prove it canonical and valid;
    ``None`` for anything else (the exact path decides then).

    The kind read off the text only picks the shape to try: the decoded kind must be that
    kind, and the decoded value must encode back to exactly ``raw``.
    """
    if len(raw) > MAX_JSON_BYTES or not raw.isascii():
        return None
    start = raw.rfind(_KIND_KEY) + len(_KIND_KEY)
    known = _DECODERS.get(raw[start : raw.find(b'"', start)])
    if known is None:
        return None
    kind, decoder = known
    try:
        signed = decoder.decode(raw)
        unsigned = signed.tx
        body: _AnyBody = unsigned.body
        hex_text = signed.sig + unsigned.chain + unsigned.nonce + body.hex_text()
        if (
            unsigned.kind != kind
            or _ENCODER.encode(signed) != raw
            or not only_lower_hex(hex_text)
            or not is_did(unsigned.author)
        ):
            return None
    except (msgspec.MsgspecError, ValueError, TypeError, RecursionError):
        return None
    return (
        unsigned.chain,
        kind,
        unsigned.author,
        unsigned.nonce,
        unsigned.time,
        body.plain(),
        signed.sig,
        body.typed(),
    )
